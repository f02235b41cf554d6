// The broker on Azure Container Apps: an internal, VNet-injected environment
// (no public address at all) and one container app with three ports: HTTPS for
// the control plane API, SSH for engineers (front door), and the gateway
// tunnel endpoint. Two or more replicas run side by side on one PostgreSQL; a
// fourth port, the link between replicas (2224), is in no ingress: the replicas
// dial one another's own addresses inside the apps subnet (network.bicep lets only
// that subnet reach it). It runs as a user-assigned managed identity: no secrets in
// configuration; it reaches the database, Key Vault, the recordings container
// and the Data Collection Rule with Entra ID tokens.

param location string
param prefix string
param tags object

@description('Subnet delegated to Microsoft.App/environments.')
param subnetId string

@description('Virtual networks to link to the environment\'s private DNS zone.')
param vnetIds array

@description('Address ranges allowed to reach the broker (hospitals, vendor virtual desktops).')
param clientAddressPrefixes array

@description('Address range the environment\'s ingress proxies connect from (the apps subnet).')
param ingressAddressPrefix string

@description('Broker image (in the private registry), by digest or immutable tag.')
param image string

param registryServer string

@description('Resource id of the broker\'s user-assigned identity.')
param identityId string

@description('Client id of that identity (AZURE_CLIENT_ID for the Azure SDK).')
param identityClientId string

@description('Name of that identity (its PostgreSQL role name).')
param identityName string

@description('Two at least: a gateway keeps tunnels to two replicas; losing one loses no hospital.')
@minValue(2)
param minReplicas int
@minValue(2)
param maxReplicas int

@description('Seconds live sessions get to end on a stop or a new revision (below the platform\'s grace).')
@minValue(0)
@maxValue(550)
param drainGraceSeconds int = 20

@description('Seconds /readyz fails on a stop before the drain starts, while the replica still serves: the readiness probe (every 5 s, 2 failures) takes it out of the ingress first.')
@minValue(0)
@maxValue(40)
param drainLeadSeconds int = 10

// Settings handed to the broker (see docs/deploy-azure.md for each one).
param postgresFqdn string
param postgresDatabase string
param keyVaultUri string
param recordingsUrl string
param logsIngestionEndpoint string
param dcrImmutableId string
param dcrStreamName string

param workspaceId string

resource environment 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: 'cae-${prefix}'
  location: location
  tags: tags
  properties: {
    vnetConfiguration: {
      infrastructureSubnetId: subnetId
      internal: true
    }
    zoneRedundant: true
    workloadProfiles: [
      {
        name: 'Consumption'
        workloadProfileType: 'Consumption'
      }
    ]
    appLogsConfiguration: {
      destination: 'azure-monitor'
    }
    peerAuthentication: {
      mtls: {
        enabled: true
      }
    }
  }
}

var allowClients = [for (cidr, i) in clientAddressPrefixes: {
  name: 'client-${i}'
  action: 'Allow'
  ipAddressRange: cidr
}]

resource broker 'Microsoft.App/containerApps@2024-03-01' = {
  name: 'ca-${prefix}-broker'
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    environmentId: environment.id
    workloadProfileName: 'Consumption'
    configuration: {
      activeRevisionsMode: 'Single'
      ingress: {
        // "external" here means reachable from the virtual network; the environment itself is internal.
        external: true
        targetPort: 8440
        transport: 'http'
        allowInsecure: false
        ipSecurityRestrictions: allowClients
        additionalPortMappings: [
          {
            external: true
            targetPort: 2222
            exposedPort: 22
          }
          {
            external: true
            targetPort: 2223
            exposedPort: 2223
          }
        ]
      }
      registries: [
        {
          server: registryServer
          identity: identityId
        }
      ]
    }
    template: {
      containers: [
        {
          name: 'broker'
          image: image
          resources: {
            cpu: json('1.0')
            memory: '2Gi'
          }
          env: [
            {
              // Every Azure client signs in as this identity (broker.identity): the
              // Azure SDK reads AZURE_CLIENT_ID, the broker HOSHU_AZURE_CLIENT_ID.
              name: 'AZURE_CLIENT_ID'
              value: identityClientId
            }
            {
              name: 'HOSHU_AZURE_CLIENT_ID'
              value: identityClientId
            }
            {
              // No password: the identity's Entra ID token is the password, refreshed
              // before it expires. The user is the identity's PostgreSQL role.
              name: 'HOSHU_DATABASE_URL'
              value: 'postgresql://${identityName}@${postgresFqdn}:5432/${postgresDatabase}?sslmode=require'
            }
            {
              name: 'HOSHU_DATABASE_AUTH'
              value: 'entra'
            }
            {
              // The hash-chained audit log in PostgreSQL (one chain per replica), so it
              // survives the container.
              name: 'HOSHU_AUDIT_STORE'
              value: 'postgres'
            }
            {
              // Live sessions get this long to end cleanly on SIGTERM, inside the
              // platform's terminationGracePeriodSeconds below.
              name: 'HOSHU_DRAIN_GRACE_S'
              value: string(drainGraceSeconds)
            }
            {
              // /readyz fails this long first on SIGTERM, the ingress moves new
              // connections to the other replicas, then the drain above starts.
              name: 'HOSHU_DRAIN_LEAD_S'
              value: string(drainLeadSeconds)
            }
            {
              // The link between replicas (SSH, each replica's key pinned in the
              // database). Listening everywhere, a replica publishes its own address
              // (its host name's) for the others to dial; no HOSHU_REPLICA_ID: each
              // replica is named after its host name, the platform's replica name.
              name: 'HOSHU_PEER_HOST'
              value: '0.0.0.0'
            }
            {
              name: 'HOSHU_PEER_PORT'
              value: '2224'
            }
            {
              name: 'HOSHU_API_HOST'
              value: '0.0.0.0'
            }
            {
              name: 'HOSHU_API_PORT'
              value: '8440'
            }
            {
              name: 'HOSHU_SSH_HOST'
              value: '0.0.0.0'
            }
            {
              name: 'HOSHU_SSH_PORT'
              value: '2222'
            }
            {
              name: 'HOSHU_TUNNEL_HOST'
              value: '0.0.0.0'
            }
            {
              name: 'HOSHU_TUNNEL_PORT'
              value: '2223'
            }
            {
              name: 'HOSHU_PUBLIC_API_URL'
              value: 'https://ca-${prefix}-broker.${environment.properties.defaultDomain}'
            }
            {
              name: 'HOSHU_KEY_VAULT_URL'
              value: keyVaultUri
            }
            {
              name: 'HOSHU_RECORDINGS_URL'
              value: recordingsUrl
            }
            {
              name: 'HOSHU_AZURE_LOGS_ENDPOINT'
              value: logsIngestionEndpoint
            }
            {
              name: 'HOSHU_AZURE_DCR_IMMUTABLE_ID'
              value: dcrImmutableId
            }
            {
              name: 'HOSHU_AZURE_DCR_STREAM'
              value: dcrStreamName
            }
            {
              // Every API request reaches the broker from the environment's ingress
              // (Envoy in the infrastructure subnet), so its X-Forwarded-For is the
              // caller: believed from that subnet only, read from the right. Without
              // it, throttling and vendors' source networks would see one address.
              name: 'HOSHU_TRUSTED_PROXIES'
              value: string([ingressAddressPrefix])
            }
          ]
          // The data directory lives as long as the replica, across restarts of its
          // container: the replica's peer key, pinned in the database under the
          // replica's name, stays the same (a new key under a pinned name is refused).
          volumeMounts: [
            {
              volumeName: 'data'
              mountPath: '/var/lib/hoshu'
            }
          ]
          // /healthz: the process lives; /readyz: database, key store and recording
          // store answer, and 503 "draining" from SIGTERM on (docs/deploy-azure.md, Image)
          probes: [
            {
              type: 'Liveness'
              httpGet: {
                path: '/healthz'
                port: 8440
              }
              periodSeconds: 10
            }
            {
              type: 'Readiness'
              httpGet: {
                path: '/readyz'
                port: 8440
              }
              periodSeconds: 5
              failureThreshold: 2
            }
          ]
        }
      ]
      volumes: [
        {
          name: 'data'
          storageType: 'EmptyDir'
        }
      ]
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
      }
      // SIGTERM, then this long before SIGKILL: room for the lead, the drain and the
      // audit log's close.
      terminationGracePeriodSeconds: drainLeadSeconds + drainGraceSeconds + 10
    }
  }
}

module dns 'containerapps-dns.bicep' = {
  name: 'cae-dns'
  params: {
    tags: tags
    zoneName: environment.properties.defaultDomain
    staticIp: environment.properties.staticIp
    vnetIds: vnetIds
  }
}

resource environmentDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: environment
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

resource appDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: broker
  properties: {
    workspaceId: workspaceId
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

output brokerFqdn string = broker.properties.configuration.ingress.fqdn
output staticIp string = environment.properties.staticIp
output defaultDomain string = environment.properties.defaultDomain
