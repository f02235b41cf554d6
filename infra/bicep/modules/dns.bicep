// Private DNS zones for every private endpoint, linked to hub and spoke. The
// firewall's DNS proxy (hub) answers for the hospitals' forwarders, so the
// broker's private names resolve on the closed network as well.

param tags object

@description('Virtual networks (resource ids) to link to every zone.')
param vnetIds array

@description('Name of the PostgreSQL Flexible Server zone (must end in .postgres.database.azure.com).')
param postgresZoneName string

var zoneNames = [
  'privatelink.vaultcore.azure.net'
  'privatelink.blob.${environment().suffixes.storage}'
  'privatelink.monitor.azure.com'
  'privatelink.oms.opinsights.azure.com'
  'privatelink.ods.opinsights.azure.com'
  'privatelink.agentsvc.azure-automation.net'
  'privatelink.azurecr.io'
  postgresZoneName
]

resource zones 'Microsoft.Network/privateDnsZones@2024-06-01' = [for name in zoneNames: {
  name: name
  location: 'global'
  tags: tags
}]

module links 'dns-links.bicep' = [for (name, i) in zoneNames: {
  name: 'dns-links-${i}'
  params: {
    zoneName: zones[i].name
    vnetIds: vnetIds
  }
}]

output keyVaultZoneId string = zones[0].id
output blobZoneId string = zones[1].id
output monitorZoneIds array = [
  zones[2].id
  zones[3].id
  zones[4].id
  zones[5].id
  zones[1].id
]
output registryZoneId string = zones[6].id
output postgresZoneId string = zones[7].id
