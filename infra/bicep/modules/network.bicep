// Hub-and-spoke network. The hub holds Azure Firewall and the ExpressRoute
// gateway; the spoke holds the broker, the database and every private endpoint.
// Spoke traffic in both directions is routed through the firewall (IDPS), and
// the spoke does not learn hospital routes from BGP directly, so nothing
// bypasses inspection.

@description('Azure region for every resource.')
param location string

@description('Short prefix used in resource names.')
param prefix string

@description('Address space of the hub virtual network.')
param hubAddressPrefix string

@description('Address space of the spoke virtual network (broker, database, private endpoints).')
param spokeAddressPrefix string

@description('Subnet prefixes: firewall and gateway in the hub; apps, postgres and endpoints in the spoke.')
param subnetPrefixes object

@description('Private IP address the firewall takes: the 4th address of AzureFirewallSubnet (Azure reserves the first three).')
param firewallPrivateIp string

@description('Hospital networks: gateways reach the tunnel port, approvers the API.')
param hospitalAddressPrefixes array

@description('Vendor engineers\' virtual desktop networks: SSH front door and API.')
param engineerAddressPrefixes array

@description('Log Analytics workspace receiving diagnostic logs.')
param workspaceId string

param tags object

var hubSubnets = {
  firewall: subnetPrefixes.firewall
  gateway: subnetPrefixes.gateway
}
var spokeSubnets = {
  apps: subnetPrefixes.apps
  postgres: subnetPrefixes.postgres
  endpoints: subnetPrefixes.endpoints
}

resource gatewayRoutes 'Microsoft.Network/routeTables@2024-05-01' = {
  name: 'rt-${prefix}-gateway'
  location: location
  tags: tags
  properties: {
    // Hospital traffic arriving over ExpressRoute goes to the firewall first.
    disableBgpRoutePropagation: false
    routes: [
      {
        name: 'spoke-via-firewall'
        properties: {
          addressPrefix: spokeAddressPrefix
          nextHopType: 'VirtualAppliance'
          nextHopIpAddress: firewallPrivateIp
        }
      }
    ]
  }
}

resource spokeRoutes 'Microsoft.Network/routeTables@2024-05-01' = {
  name: 'rt-${prefix}-spoke'
  location: location
  tags: tags
  properties: {
    // Without this the spoke would learn hospital prefixes from BGP and skip the firewall.
    disableBgpRoutePropagation: true
    routes: [
      {
        name: 'default-via-firewall'
        properties: {
          addressPrefix: '0.0.0.0/0'
          nextHopType: 'VirtualAppliance'
          nextHopIpAddress: firewallPrivateIp
        }
      }
    ]
  }
}

resource spokeNsg 'Microsoft.Network/networkSecurityGroups@2024-05-01' = {
  name: 'nsg-${prefix}-spoke'
  location: location
  tags: tags
  properties: {
    securityRules: [
      {
        name: 'allow-hospitals-to-broker'
        properties: {
          description: 'Gateways dial out to the tunnel port; hospital approvers use the API.'
          priority: 100
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefixes: hospitalAddressPrefixes
          sourcePortRange: '*'
          destinationAddressPrefix: spokeSubnets.apps
          destinationPortRanges: [
            '443'
            '2223'
          ]
        }
      }
      {
        name: 'allow-engineers-to-broker'
        properties: {
          description: 'Vendor engineers use the SSH front door and the API from their virtual desktops only.'
          priority: 110
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefixes: engineerAddressPrefixes
          sourcePortRange: '*'
          destinationAddressPrefix: spokeSubnets.apps
          destinationPortRanges: [
            '22'
            '443'
          ]
        }
      }
      {
        name: 'allow-replica-peers'
        properties: {
          description: 'The link between broker replicas: from the apps subnet to the apps subnet only.'
          priority: 150
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: spokeSubnets.apps
          sourcePortRange: '*'
          destinationAddressPrefix: spokeSubnets.apps
          destinationPortRange: '2224'
        }
      }
      {
        name: 'deny-replica-peers-from-elsewhere'
        properties: {
          description: 'Nothing else reaches the link between replicas, not even the rest of the spoke.'
          priority: 160
          direction: 'Inbound'
          access: 'Deny'
          protocol: '*'
          sourceAddressPrefix: '*'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '2224'
        }
      }
      {
        name: 'allow-spoke-internal'
        properties: {
          priority: 200
          direction: 'Inbound'
          access: 'Allow'
          protocol: '*'
          sourceAddressPrefix: spokeAddressPrefix
          sourcePortRange: '*'
          destinationAddressPrefix: spokeAddressPrefix
          destinationPortRange: '*'
        }
      }
      {
        name: 'allow-azure-load-balancer'
        properties: {
          priority: 300
          direction: 'Inbound'
          access: 'Allow'
          protocol: '*'
          sourceAddressPrefix: 'AzureLoadBalancer'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '*'
        }
      }
      {
        name: 'deny-everything-else'
        properties: {
          priority: 4096
          direction: 'Inbound'
          access: 'Deny'
          protocol: '*'
          sourceAddressPrefix: '*'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '*'
        }
      }
    ]
  }
}

resource hub 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: 'vnet-${prefix}-hub'
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        hubAddressPrefix
      ]
    }
    dhcpOptions: {
      // The firewall is the DNS proxy; the second address is Azure's resolver as fallback.
      dnsServers: [
        firewallPrivateIp
        '168.63.129.16'
      ]
    }
    subnets: [
      {
        name: 'AzureFirewallSubnet'
        properties: {
          addressPrefix: hubSubnets.firewall
        }
      }
      {
        name: 'GatewaySubnet'
        properties: {
          addressPrefix: hubSubnets.gateway
          routeTable: {
            id: gatewayRoutes.id
          }
        }
      }
    ]
  }
}

resource spoke 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: 'vnet-${prefix}-spoke'
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        spokeAddressPrefix
      ]
    }
    dhcpOptions: {
      dnsServers: [
        firewallPrivateIp
        '168.63.129.16'
      ]
    }
    subnets: [
      {
        name: 'snet-apps'
        properties: {
          addressPrefix: spokeSubnets.apps
          networkSecurityGroup: {
            id: spokeNsg.id
          }
          routeTable: {
            id: spokeRoutes.id
          }
          delegations: [
            {
              name: 'container-apps'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
      {
        name: 'snet-postgres'
        properties: {
          addressPrefix: spokeSubnets.postgres
          networkSecurityGroup: {
            id: spokeNsg.id
          }
          routeTable: {
            id: spokeRoutes.id
          }
          // Backups and WAL archiving reach Azure Storage through the service endpoint, not the firewall.
          serviceEndpoints: [
            {
              service: 'Microsoft.Storage'
            }
          ]
          delegations: [
            {
              name: 'postgres-flexible'
              properties: {
                serviceName: 'Microsoft.DBforPostgreSQL/flexibleServers'
              }
            }
          ]
        }
      }
      {
        name: 'snet-endpoints'
        properties: {
          addressPrefix: spokeSubnets.endpoints
          networkSecurityGroup: {
            id: spokeNsg.id
          }
          privateEndpointNetworkPolicies: 'Enabled'
        }
      }
    ]
  }
}

resource nsgDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: spokeNsg
  properties: {
    workspaceId: workspaceId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
  }
}

resource hubDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: hub
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

resource spokeDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: spoke
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

output hubId string = hub.id
output hubName string = hub.name
output spokeId string = spoke.id
output spokeName string = spoke.name
output firewallSubnetId string = '${hub.id}/subnets/AzureFirewallSubnet'
output gatewaySubnetId string = '${hub.id}/subnets/GatewaySubnet'
output appsSubnetId string = '${spoke.id}/subnets/snet-apps'
output postgresSubnetId string = '${spoke.id}/subnets/snet-postgres'
output endpointsSubnetId string = '${spoke.id}/subnets/snet-endpoints'
output appsSubnetPrefix string = spokeSubnets.apps
