// Session recordings on immutable (WORM) blob storage: version-level
// immutability with a time-based retention policy that can be locked, so no
// one (not even the subscription owner) can alter or delete a recording before
// its retention ends. Entra ID only (no shared keys), private endpoint only.

param location string
param prefix string
param tags object

@description('Globally unique storage account name (3-24 lowercase letters and digits).')
@minLength(3)
@maxLength(24)
param name string

@description('Days each recording is kept immutable.')
@minValue(1)
param retentionDays int

@description('Lock the retention policy: it can then be extended but never shortened or removed.')
param lockRetentionPolicy bool

param endpointsSubnetId string
param dnsZoneId string
param workspaceId string

@description('Principal id of the broker\'s user-assigned identity.')
param brokerPrincipalId string

// Storage Blob Data Contributor: write recordings (immutability stops changes and deletes).
var blobContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_GZRS'
  }
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    publicNetworkAccess: 'Disabled'
    networkAcls: {
      defaultAction: 'Deny'
      bypass: 'AzureServices'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
    immutableStorageWithVersioning: {
      enabled: true
      immutabilityPolicy: {
        immutabilityPeriodSinceCreationInDays: retentionDays
        // Recordings of live sessions are append blobs: appending stays allowed, changing does not.
        allowProtectedAppendWrites: true
        state: lockRetentionPolicy ? 'Locked' : 'Unlocked'
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    isVersioningEnabled: true
    deleteRetentionPolicy: {
      enabled: true
      days: 30
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 30
    }
  }
}

resource recordings 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: 'recordings'
  properties: {
    publicAccess: 'None'
    immutableStorageWithVersioning: {
      enabled: true
    }
  }
}

resource brokerWrites 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(recordings.id, brokerPrincipalId, blobContributorRoleId)
  scope: recordings
  properties: {
    principalId: brokerPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobContributorRoleId)
  }
}

module privateEndpoint 'private-endpoint.bicep' = {
  name: 'pe-blob'
  params: {
    location: location
    tags: tags
    name: 'pe-${prefix}-blob'
    subnetId: endpointsSubnetId
    targetId: account.id
    groupId: 'blob'
    dnsZoneIds: [
      dnsZoneId
    ]
  }
}

resource accountDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: account
  properties: {
    workspaceId: workspaceId
    metrics: [
      {
        category: 'Transaction'
        enabled: true
      }
    ]
  }
}

resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: blobService
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
        category: 'Transaction'
        enabled: true
      }
    ]
  }
}

output id string = account.id
output recordingsUrl string = '${account.properties.primaryEndpoints.blob}${recordings.name}'
