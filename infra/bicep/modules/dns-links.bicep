// Links one private DNS zone to a list of virtual networks.

param zoneName string
param vnetIds array

resource zone 'Microsoft.Network/privateDnsZones@2024-06-01' existing = {
  name: zoneName
}

resource links 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = [for (id, i) in vnetIds: {
  parent: zone
  name: 'link-${i}'
  location: 'global'
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: id
    }
  }
}]
