// One private endpoint with its DNS zone group: the service gets an address in
// the spoke's endpoint subnet and its public name resolves to it privately.

param location string
param tags object

@description('Name of the private endpoint.')
param name string

@description('Subnet for the endpoint.')
param subnetId string

@description('Resource the endpoint connects to.')
param targetId string

@description('Sub-resource (group id): vault, blob, registry, azuremonitor, ...')
param groupId string

@description('Private DNS zones (resource ids) registered for the endpoint.')
param dnsZoneIds array

resource endpoint 'Microsoft.Network/privateEndpoints@2024-05-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    subnet: {
      id: subnetId
    }
    privateLinkServiceConnections: [
      {
        name: name
        properties: {
          privateLinkServiceId: targetId
          groupIds: [
            groupId
          ]
        }
      }
    ]
  }
}

resource zoneGroup 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = {
  parent: endpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [for (zoneId, i) in dnsZoneIds: {
      name: 'zone-${i}'
      properties: {
        privateDnsZoneId: zoneId
      }
    }]
  }
}

output id string = endpoint.id
