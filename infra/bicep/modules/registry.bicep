// Private container registry for the broker image: Premium (private link,
// zone redundancy), no admin user, no anonymous pull, no public network, no
// export. The broker pulls with its managed identity.

param location string
param prefix string
param tags object

@description('Globally unique registry name (5-50 letters and digits).')
param name string

param endpointsSubnetId string
param dnsZoneId string
param workspaceId string

@description('Principal id of the broker\'s user-assigned identity.')
param brokerPrincipalId string

var acrPullRoleId = '7f951dda-4ed3-4680-a7ca-43fe172d538d'

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Premium'
  }
  // checkov:skip=CKV_AZURE_166: quarantine needs an external scanner to release every image; the release pipeline scans the broker image and the deployment pins it by digest (brokerImage)
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
    publicNetworkAccess: 'Disabled'
    networkRuleBypassOptions: 'AzureServices'
    zoneRedundancy: 'Enabled'
    dataEndpointEnabled: true
    policies: {
      exportPolicy: {
        status: 'disabled'
      }
      retentionPolicy: {
        days: 30
        status: 'enabled'
      }
    }
  }
}

resource brokerPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, brokerPrincipalId, acrPullRoleId)
  scope: registry
  properties: {
    principalId: brokerPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPullRoleId)
  }
}

module privateEndpoint 'private-endpoint.bicep' = {
  name: 'pe-registry'
  params: {
    location: location
    tags: tags
    name: 'pe-${prefix}-registry'
    subnetId: endpointsSubnetId
    targetId: registry.id
    groupId: 'registry'
    dnsZoneIds: [
      dnsZoneId
    ]
  }
}

resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: registry
  properties: {
    workspaceId: workspaceId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

output id string = registry.id
output loginServer string = registry.properties.loginServer
