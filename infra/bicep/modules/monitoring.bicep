// The ingestion path for hoshu audit events: a Data Collection Endpoint and a
// Data Collection Rule whose stream Custom-HoshuAudit feeds HoshuAudit_CL, both
// reached only through an Azure Monitor Private Link Scope; and the one role
// the broker's identity needs to publish to the rule.

param location string
param prefix string
param tags object

param workspaceName string

@description('Subnet for the Azure Monitor private endpoint.')
param endpointsSubnetId string

@description('Private DNS zones for Azure Monitor (monitor, oms, ods, agentsvc, blob).')
param monitorZoneIds array

@description('Principal id of the broker\'s user-assigned identity.')
param brokerPrincipalId string

var auditTable = loadJsonContent('../audit-table.json')
// Monitoring Metrics Publisher: the built-in role that allows sending to a DCR.
var metricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: workspaceName
}

resource endpoint 'Microsoft.Insights/dataCollectionEndpoints@2023-03-11' = {
  name: 'dce-${prefix}'
  location: location
  tags: tags
  properties: {
    networkAcls: {
      publicNetworkAccess: 'Disabled'
    }
  }
}

resource rule 'Microsoft.Insights/dataCollectionRules@2023-03-11' = {
  name: 'dcr-${prefix}-audit'
  location: location
  tags: tags
  properties: {
    description: 'hoshu audit events to ${auditTable.tableName}'
    dataCollectionEndpointId: endpoint.id
    streamDeclarations: {
      '${auditTable.streamName}': {
        columns: [for c in auditTable.columns: {
          name: c.name
          type: c.type
        }]
      }
    }
    destinations: {
      logAnalytics: [
        {
          name: 'hoshuWorkspace'
          workspaceResourceId: workspace.id
        }
      ]
    }
    dataFlows: [
      {
        streams: [
          auditTable.streamName
        ]
        destinations: [
          'hoshuWorkspace'
        ]
        transformKql: 'source'
        outputStream: 'Custom-${auditTable.tableName}'
      }
    ]
  }
}

resource publisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(rule.id, brokerPrincipalId, metricsPublisherRoleId)
  scope: rule
  properties: {
    principalId: brokerPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', metricsPublisherRoleId)
  }
}

resource scope 'Microsoft.Insights/privateLinkScopes@2021-07-01-preview' = {
  name: 'ampls-${prefix}'
  location: 'global'
  tags: tags
  properties: {
    accessModeSettings: {
      ingestionAccessMode: 'PrivateOnly'
      queryAccessMode: 'PrivateOnly'
    }
  }
}

resource scopedWorkspace 'Microsoft.Insights/privateLinkScopes/scopedResources@2021-07-01-preview' = {
  parent: scope
  name: 'workspace'
  properties: {
    linkedResourceId: workspace.id
  }
}

resource scopedEndpoint 'Microsoft.Insights/privateLinkScopes/scopedResources@2021-07-01-preview' = {
  parent: scope
  name: 'collection-endpoint'
  properties: {
    linkedResourceId: endpoint.id
  }
}

module privateEndpoint 'private-endpoint.bicep' = {
  name: 'pe-ampls'
  dependsOn: [
    scopedWorkspace
    scopedEndpoint
  ]
  params: {
    location: location
    tags: tags
    name: 'pe-${prefix}-ampls'
    subnetId: endpointsSubnetId
    targetId: scope.id
    groupId: 'azuremonitor'
    dnsZoneIds: monitorZoneIds
  }
}

resource ruleDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: rule
  properties: {
    workspaceId: workspace.id
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

output endpointId string = endpoint.id
output logsIngestionEndpoint string = endpoint.properties.logsIngestion.endpoint
output ruleId string = rule.id
output ruleImmutableId string = rule.properties.immutableId
output streamName string = auditTable.streamName
