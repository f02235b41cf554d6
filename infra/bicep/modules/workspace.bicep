// Log Analytics workspace with Microsoft Sentinel and the hoshu audit table.
// The table's columns are loaded from audit-table.json, which is generated
// from the audit event catalog (python -m audit.sentinel): one schema, not two.

param location string
param prefix string
param tags object

@description('Days logs stay in the interactive (analytics) tier.')
@minValue(90)
@maxValue(730)
param retentionDays int

@description('Days hoshu audit events are kept in total (interactive plus long-term retention).')
@minValue(90)
@maxValue(4383)
param auditTotalRetentionDays int

@description('Allow Log Analytics queries from public networks (Enabled only if analysts cannot use the private network).')
@allowed([
  'Enabled'
  'Disabled'
])
param publicQueryAccess string

var auditTable = loadJsonContent('../audit-table.json')

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${prefix}'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionDays
    publicNetworkAccessForIngestion: 'Disabled'
    publicNetworkAccessForQuery: publicQueryAccess
    features: {
      disableLocalAuth: true
    }
  }
}

resource sentinel 'Microsoft.SecurityInsights/onboardingStates@2024-03-01' = {
  name: 'default'
  scope: workspace
  properties: {}
}

resource auditTableResource 'Microsoft.OperationalInsights/workspaces/tables@2022-10-01' = {
  parent: workspace
  name: auditTable.tableName
  properties: {
    plan: 'Analytics'
    retentionInDays: retentionDays
    totalRetentionInDays: auditTotalRetentionDays
    schema: {
      name: auditTable.tableName
      description: 'hoshu audit events (hash-chained at the broker, shipped through the Logs Ingestion API).'
      columns: auditTable.columns
    }
  }
}

resource workspaceDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: workspace
  properties: {
    workspaceId: workspace.id
    logs: [
      {
        categoryGroup: 'audit'
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

output id string = workspace.id
output name string = workspace.name
output customerId string = workspace.properties.customerId
output auditTableName string = auditTableResource.name
output sentinelOnboardingId string = sentinel.id
