// hoshu on Azure: the broker behind Azure Firewall Premium, reached by the
// hospitals over ExpressRoute only, with private networking for every service
// and every log in Microsoft Sentinel. See docs/deploy-azure.md.
//
//   hub:   Azure Firewall Premium (IDPS deny), ExpressRoute gateway + connection
//   spoke: Container Apps (internal) running the broker, PostgreSQL Flexible
//          Server, private endpoints for Key Vault, recordings storage (WORM),
//          the container registry and Azure Monitor (private link scope)
//   logs:  Log Analytics + Sentinel, HoshuAudit_CL via DCE/DCR, analytics rules

targetScope = 'resourceGroup'

@description('Azure region (one with availability zones).')
param location string = resourceGroup().location

@description('Short lowercase prefix for resource names (letters and digits).')
@minLength(2)
@maxLength(10)
param prefix string = 'hoshu'

@description('Tags put on every resource.')
param tags object = {
  application: 'hoshu'
}

@description('Address space of the hub virtual network (a /24).')
param hubAddressPrefix string = '10.40.0.0/24'

@description('Address space of the spoke virtual network (a /22).')
param spokeAddressPrefix string = '10.40.4.0/22'

@description('Subnets: AzureFirewallSubnet (/26) and GatewaySubnet (/27) in the hub; apps (/23 or larger, Container Apps), postgres (/28 or larger) and endpoints in the spoke.')
param subnetPrefixes object = {
  firewall: '10.40.0.0/26'
  gateway: '10.40.0.64/27'
  apps: '10.40.4.0/23'
  postgres: '10.40.6.0/27'
  endpoints: '10.40.6.64/26'
}

@description('Private IP of Azure Firewall: the 4th address of subnetPrefixes.firewall (Azure reserves the first three).')
param firewallPrivateIp string = '10.40.0.4'

@description('Hospital networks reachable over ExpressRoute: gateways (tunnel) and approvers (API) come from these.')
@minLength(1)
param hospitalAddressPrefixes array

@description('Vendor engineers\' virtual desktop networks: SSH front door and API come from these.')
@minLength(1)
param engineerAddressPrefixes array

@description('Resource id of the ExpressRoute circuit to connect.')
param expressRouteCircuitId string

@description('Authorization key for a circuit in another subscription; leave empty for a circuit in this one.')
@secure()
param expressRouteAuthorizationKey string

@description('ExpressRoute gateway SKU.')
@allowed([
  'ErGw1AZ'
  'ErGw2AZ'
  'ErGw3AZ'
  'ErGwScale'
])
param expressRouteGatewaySku string = 'ErGw1AZ'

@description('Inspect the broker\'s outbound TLS at the firewall (needs an intermediate CA in Key Vault).')
param enableTlsInspection bool = false

@description('Key Vault secret id of the TLS inspection CA (PFX); only with enableTlsInspection.')
param tlsInspectionCaSecretId string = ''

@description('Broker image repository and tag or digest inside the private registry, e.g. hoshu/broker@sha256:...')
param brokerImage string

@description('Deploy the broker app. false for the first deployment, until the image is imported into the new private registry.')
param deployBroker bool = true

@description('Broker replicas always running: two at least, so losing one loses no hospital (docs/architecture.md, Replicas).')
@minValue(2)
param brokerMinReplicas int = 2

@minValue(2)
param brokerMaxReplicas int = 4

@description('PostgreSQL compute SKU (General Purpose tier).')
param postgresSkuName string = 'Standard_D2ds_v5'

@minValue(32)
param postgresStorageSizeGB int = 128

@description('Object id of the Entra ID group administering PostgreSQL.')
param postgresAdminGroupObjectId string

@description('Display name of that group.')
param postgresAdminGroupName string

@description('Days each session recording stays immutable (five years by default).')
@minValue(1)
param recordingRetentionDays int = 1825

@description('Lock the recordings retention policy (irreversible: it can then only be extended).')
param lockRecordingRetention bool = false

@description('Days logs stay in the interactive tier of Log Analytics.')
@minValue(90)
@maxValue(730)
param logRetentionDays int = 90

@description('Days hoshu audit events are kept in total, including long-term retention.')
@minValue(90)
@maxValue(4383)
param auditTotalRetentionDays int = 1825

@description('Allow Log Analytics queries from public networks.')
@allowed([
  'Enabled'
  'Disabled'
])
param workspacePublicQueryAccess string = 'Disabled'

@description('Second-factor failures for one account within the window that raise an alert.')
param mfaFailureThreshold int = 5

@description('Window for counting second-factor failures, in minutes.')
param mfaWindowMinutes int = 15

@description('Minutes a gateway may stay disconnected before an alert.')
param gatewayDisconnectMinutes int = 30

@description('Minutes without a signed audit checkpoint before an alert.')
param checkpointMissingMinutes int = 60

@description('Deploy the Sentinel analytics rules enabled.')
param alertRulesEnabled bool = true

@description('Deployment time; used once, for the initial key expiry.')
param baseTime string = utcNow()

var suffix = uniqueString(resourceGroup().id)
var names = {
  keyVault: 'kv-${prefix}-${take(suffix, 8)}'
  storage: take('st${prefix}${suffix}', 24)
  registry: take('cr${prefix}${suffix}', 50)
  postgres: 'psql-${prefix}-${suffix}'
  postgresZone: '${prefix}.private.postgres.database.azure.com'
}
var clientAddressPrefixes = concat(hospitalAddressPrefixes, engineerAddressPrefixes)

resource brokerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${prefix}-broker'
  location: location
  tags: tags
}

resource firewallIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = if (enableTlsInspection) {
  name: 'id-${prefix}-firewall'
  location: location
  tags: tags
}

module workspace 'modules/workspace.bicep' = {
  name: 'workspace'
  params: {
    location: location
    prefix: prefix
    tags: tags
    retentionDays: logRetentionDays
    auditTotalRetentionDays: auditTotalRetentionDays
    publicQueryAccess: workspacePublicQueryAccess
  }
}

module network 'modules/network.bicep' = {
  name: 'network'
  params: {
    location: location
    prefix: prefix
    tags: tags
    hubAddressPrefix: hubAddressPrefix
    spokeAddressPrefix: spokeAddressPrefix
    subnetPrefixes: subnetPrefixes
    firewallPrivateIp: firewallPrivateIp
    hospitalAddressPrefixes: hospitalAddressPrefixes
    engineerAddressPrefixes: engineerAddressPrefixes
    workspaceId: workspace.outputs.id
  }
}

module dns 'modules/dns.bicep' = {
  name: 'dns'
  params: {
    tags: tags
    postgresZoneName: names.postgresZone
    vnetIds: [
      network.outputs.hubId
      network.outputs.spokeId
    ]
  }
}

module firewall 'modules/firewall.bicep' = {
  name: 'firewall'
  params: {
    location: location
    prefix: prefix
    tags: tags
    subnetId: network.outputs.firewallSubnetId
    hospitalAddressPrefixes: hospitalAddressPrefixes
    engineerAddressPrefixes: engineerAddressPrefixes
    appsSubnetPrefix: network.outputs.appsSubnetPrefix
    spokeAddressPrefix: spokeAddressPrefix
    enableTlsInspection: enableTlsInspection
    tlsInspectionCaSecretId: tlsInspectionCaSecretId
    tlsInspectionIdentityId: enableTlsInspection ? firewallIdentity.id : ''
    workspaceId: workspace.outputs.id
  }
}

module expressRoute 'modules/expressroute.bicep' = {
  name: 'expressroute'
  params: {
    location: location
    prefix: prefix
    tags: tags
    subnetId: network.outputs.gatewaySubnetId
    circuitId: expressRouteCircuitId
    authorizationKey: expressRouteAuthorizationKey
    sku: expressRouteGatewaySku
    workspaceId: workspace.outputs.id
  }
}

module spokePeering 'modules/spoke-peering.bicep' = {
  name: 'spoke-peering'
  dependsOn: [
    expressRoute
  ]
  params: {
    hubName: network.outputs.hubName
    spokeName: network.outputs.spokeName
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    prefix: prefix
    tags: tags
    workspaceName: workspace.outputs.name
    endpointsSubnetId: network.outputs.endpointsSubnetId
    monitorZoneIds: dns.outputs.monitorZoneIds
    brokerPrincipalId: brokerIdentity.properties.principalId
  }
}

module sentinel 'modules/sentinel.bicep' = {
  // After the workspace module, which creates HoshuAudit_CL: rules are validated against it.
  name: 'sentinel'
  params: {
    workspaceName: workspace.outputs.name
    mfaFailureThreshold: mfaFailureThreshold
    mfaWindowMinutes: mfaWindowMinutes
    gatewayDisconnectMinutes: gatewayDisconnectMinutes
    checkpointMissingMinutes: checkpointMissingMinutes
    enabled: alertRulesEnabled
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    location: location
    prefix: prefix
    tags: tags
    name: names.keyVault
    endpointsSubnetId: network.outputs.endpointsSubnetId
    dnsZoneId: dns.outputs.keyVaultZoneId
    workspaceId: workspace.outputs.id
    brokerPrincipalId: brokerIdentity.properties.principalId
    baseTime: baseTime
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    location: location
    prefix: prefix
    tags: tags
    name: names.storage
    retentionDays: recordingRetentionDays
    lockRetentionPolicy: lockRecordingRetention
    endpointsSubnetId: network.outputs.endpointsSubnetId
    dnsZoneId: dns.outputs.blobZoneId
    workspaceId: workspace.outputs.id
    brokerPrincipalId: brokerIdentity.properties.principalId
  }
}

module postgres 'modules/postgres.bicep' = {
  name: 'postgres'
  params: {
    location: location
    tags: tags
    name: names.postgres
    skuName: postgresSkuName
    storageSizeGB: postgresStorageSizeGB
    subnetId: network.outputs.postgresSubnetId
    dnsZoneId: dns.outputs.postgresZoneId
    adminGroupObjectId: postgresAdminGroupObjectId
    adminGroupName: postgresAdminGroupName
    brokerPrincipalId: brokerIdentity.properties.principalId
    brokerIdentityName: brokerIdentity.name
    workspaceId: workspace.outputs.id
  }
}

module registry 'modules/registry.bicep' = {
  name: 'registry'
  params: {
    location: location
    prefix: prefix
    tags: tags
    name: names.registry
    endpointsSubnetId: network.outputs.endpointsSubnetId
    dnsZoneId: dns.outputs.registryZoneId
    workspaceId: workspace.outputs.id
    brokerPrincipalId: brokerIdentity.properties.principalId
  }
}

module containerApps 'modules/containerapps.bicep' = if (deployBroker) {
  name: 'containerapps'
  dependsOn: [
    firewall
    spokePeering
  ]
  params: {
    location: location
    prefix: prefix
    tags: tags
    subnetId: network.outputs.appsSubnetId
    ingressAddressPrefix: subnetPrefixes.apps
    vnetIds: [
      network.outputs.hubId
      network.outputs.spokeId
    ]
    clientAddressPrefixes: clientAddressPrefixes
    image: '${registry.outputs.loginServer}/${brokerImage}'
    registryServer: registry.outputs.loginServer
    identityId: brokerIdentity.id
    identityClientId: brokerIdentity.properties.clientId
    identityName: brokerIdentity.name
    minReplicas: brokerMinReplicas
    maxReplicas: brokerMaxReplicas
    postgresFqdn: postgres.outputs.fqdn
    postgresDatabase: postgres.outputs.databaseName
    keyVaultUri: keyVault.outputs.uri
    recordingsUrl: storage.outputs.recordingsUrl
    logsIngestionEndpoint: monitoring.outputs.logsIngestionEndpoint
    dcrImmutableId: monitoring.outputs.ruleImmutableId
    dcrStreamName: monitoring.outputs.streamName
    workspaceId: workspace.outputs.id
  }
}

output brokerFqdn string = deployBroker ? containerApps.outputs.brokerFqdn : ''
output brokerStaticIp string = deployBroker ? containerApps.outputs.staticIp : ''
output brokerIdentityClientId string = brokerIdentity.properties.clientId
output brokerIdentityName string = brokerIdentity.name
output firewallPrivateIp string = firewall.outputs.privateIp
output logsIngestionEndpoint string = monitoring.outputs.logsIngestionEndpoint
output dcrImmutableId string = monitoring.outputs.ruleImmutableId
output dcrStreamName string = monitoring.outputs.streamName
output workspaceId string = workspace.outputs.id
output keyVaultUri string = keyVault.outputs.uri
output recordingsUrl string = storage.outputs.recordingsUrl
output postgresFqdn string = postgres.outputs.fqdn
output registryLoginServer string = registry.outputs.loginServer
output sentinelRuleNames array = sentinel.outputs.ruleNames
