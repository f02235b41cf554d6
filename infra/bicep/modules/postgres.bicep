// PostgreSQL Flexible Server for the broker's store: zone-redundant high
// availability, private access through a delegated subnet (no public
// endpoint), Entra ID authentication only (no passwords), TLS required,
// connection logging on, geo-redundant backups.

param location string
param tags object

@description('Globally unique server name.')
param name string

@description('Compute SKU (General Purpose or Memory Optimized; HA needs one of them).')
param skuName string

@description('Storage size in GiB.')
param storageSizeGB int

@description('Delegated subnet (Microsoft.DBforPostgreSQL/flexibleServers).')
param subnetId string

@description('Private DNS zone for the server (ends in .postgres.database.azure.com).')
param dnsZoneId string

@description('Object id of the Entra ID group that administers the server.')
param adminGroupObjectId string

@description('Display name of that group.')
param adminGroupName string

@description('Principal (object) id of the broker\'s user-assigned identity.')
param brokerPrincipalId string

@description('Name of that identity: its PostgreSQL role, the user in HOSHU_DATABASE_URL.')
param brokerIdentityName string

param workspaceId string

resource server 'Microsoft.DBforPostgreSQL/flexibleServers@2024-08-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: skuName
    tier: 'GeneralPurpose'
  }
  properties: {
    version: '16'
    storage: {
      storageSizeGB: storageSizeGB
      autoGrow: 'Enabled'
    }
    backup: {
      backupRetentionDays: 35
      geoRedundantBackup: 'Enabled'
    }
    highAvailability: {
      mode: 'ZoneRedundant'
    }
    network: {
      delegatedSubnetResourceId: subnetId
      privateDnsZoneArmResourceId: dnsZoneId
      publicNetworkAccess: 'Disabled'
    }
    authConfig: {
      activeDirectoryAuth: 'Enabled'
      passwordAuth: 'Disabled'
      tenantId: tenant().tenantId
    }
  }
}

resource admins 'Microsoft.DBforPostgreSQL/flexibleServers/administrators@2024-08-01' = {
  parent: server
  name: adminGroupObjectId
  properties: {
    principalType: 'Group'
    principalName: adminGroupName
    tenantId: tenant().tenantId
  }
}

// The broker signs in as its managed identity (an Entra ID token as the password,
// HOSHU_DATABASE_AUTH=entra): an Entra principal of the server, named after the
// identity. It runs the schema migrations at start, so it is an administrator
// (azure_pg_admin); docs/deploy-azure.md shows a narrower role set up by hand.
resource brokerPrincipal 'Microsoft.DBforPostgreSQL/flexibleServers/administrators@2024-08-01' = {
  parent: server
  name: brokerPrincipalId
  dependsOn: [
    admins
  ]
  properties: {
    principalType: 'ServicePrincipal'
    principalName: brokerIdentityName
    tenantId: tenant().tenantId
  }
}

// Server parameters are applied one after another, after the administrators:
// the service rejects concurrent updates of one server.
resource requireTls 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = {
  parent: server
  name: 'require_secure_transport'
  dependsOn: [
    brokerPrincipal
  ]
  properties: {
    value: 'on'
    source: 'user-override'
  }
}

resource logConnections 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = {
  parent: server
  name: 'log_connections'
  dependsOn: [
    requireTls
  ]
  properties: {
    value: 'on'
    source: 'user-override'
  }
}

resource logDisconnections 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = {
  parent: server
  name: 'log_disconnections'
  dependsOn: [
    logConnections
  ]
  properties: {
    value: 'on'
    source: 'user-override'
  }
}

resource logCheckpoints 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = {
  parent: server
  name: 'log_checkpoints'
  dependsOn: [
    logDisconnections
  ]
  properties: {
    value: 'on'
    source: 'user-override'
  }
}

resource throttle 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = {
  parent: server
  name: 'connection_throttle.enable'
  dependsOn: [
    logCheckpoints
  ]
  properties: {
    value: 'on'
    source: 'user-override'
  }
}

resource database 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2024-08-01' = {
  parent: server
  name: 'hoshu'
  dependsOn: [
    throttle
  ]
  properties: {
    charset: 'UTF8'
    collation: 'en_US.utf8'
  }
}

resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: server
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

output id string = server.id
output fqdn string = server.properties.fullyQualifiedDomainName
output databaseName string = database.name
