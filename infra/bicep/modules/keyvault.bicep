// Key Vault for the broker's keys: RBAC only (no access policies), purge
// protection and soft delete, no public network access. Two HSM-backed keys:
// one signs audit checkpoints, one wraps the keys that encrypt instrument
// credentials in the database (envelope encryption). The broker's SSH host key
// is a secret the operator adds after deployment (docs/deploy-azure.md).

param location string
param prefix string
param tags object

@description('Globally unique name of the vault.')
param name string

param endpointsSubnetId string
param dnsZoneId string
param workspaceId string

@description('Principal id of the broker\'s user-assigned identity.')
param brokerPrincipalId string

@description('Any time in the deployment (utcNow()); keys expire two years after their first creation.')
param baseTime string

// Built-in roles: Key Vault Crypto User (sign, wrap, unwrap) and Key Vault Secrets User (read).
var cryptoUserRoleId = '12338af0-0e69-4776-bea7-57ae8d297424'
var secretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'
var keyExpiry = dateTimeToEpoch(dateTimeAdd(baseTime, 'P2Y'))

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'premium'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Disabled'
    networkAcls: {
      defaultAction: 'Deny'
      bypass: 'AzureServices'
    }
  }
}

resource signingKey 'Microsoft.KeyVault/vaults/keys@2023-07-01' = {
  parent: vault
  name: 'audit-signing'
  properties: {
    kty: 'EC-HSM'
    curveName: 'P-256'
    keyOps: [
      'sign'
      'verify'
    ]
    attributes: {
      enabled: true
      exp: keyExpiry
    }
    rotationPolicy: {
      attributes: {
        expiryTime: 'P2Y'
      }
      lifetimeActions: [
        {
          trigger: {
            timeAfterCreate: 'P1Y'
          }
          action: {
            type: 'rotate'
          }
        }
        {
          trigger: {
            timeBeforeExpiry: 'P30D'
          }
          action: {
            type: 'notify'
          }
        }
      ]
    }
  }
}

resource credentialKey 'Microsoft.KeyVault/vaults/keys@2023-07-01' = {
  parent: vault
  name: 'credentials-kek'
  properties: {
    kty: 'RSA-HSM'
    keySize: 3072
    keyOps: [
      'wrapKey'
      'unwrapKey'
    ]
    attributes: {
      enabled: true
      exp: keyExpiry
    }
    rotationPolicy: {
      attributes: {
        expiryTime: 'P2Y'
      }
      lifetimeActions: [
        {
          trigger: {
            timeAfterCreate: 'P1Y'
          }
          action: {
            type: 'rotate'
          }
        }
        {
          trigger: {
            timeBeforeExpiry: 'P30D'
          }
          action: {
            type: 'notify'
          }
        }
      ]
    }
  }
}

resource brokerCrypto 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, brokerPrincipalId, cryptoUserRoleId)
  scope: vault
  properties: {
    principalId: brokerPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', cryptoUserRoleId)
  }
}

resource brokerSecrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, brokerPrincipalId, secretsUserRoleId)
  scope: vault
  properties: {
    principalId: brokerPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUserRoleId)
  }
}

module privateEndpoint 'private-endpoint.bicep' = {
  name: 'pe-vault'
  params: {
    location: location
    tags: tags
    name: 'pe-${prefix}-vault'
    subnetId: endpointsSubnetId
    targetId: vault.id
    groupId: 'vault'
    dnsZoneIds: [
      dnsZoneId
    ]
  }
}

resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: vault
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

output id string = vault.id
output uri string = vault.properties.vaultUri
