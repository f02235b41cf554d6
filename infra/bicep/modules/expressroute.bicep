// ExpressRoute gateway in the hub and its connection to the vendor's circuit:
// hospitals reach the broker over the closed network, never the internet.

param location string
param prefix string
param tags object

@description('GatewaySubnet of the hub.')
param subnetId string

@description('Resource id of the ExpressRoute circuit (Microsoft.Network/expressRouteCircuits).')
param circuitId string

@description('Authorization key when the circuit belongs to another subscription; empty otherwise.')
@secure()
param authorizationKey string

@description('Gateway SKU; the AZ SKUs are zone-redundant.')
@allowed([
  'ErGw1AZ'
  'ErGw2AZ'
  'ErGw3AZ'
  'ErGwScale'
])
param sku string

param workspaceId string

resource publicIp 'Microsoft.Network/publicIPAddresses@2024-05-01' = {
  // Required by the platform for the gateway's control plane; ExpressRoute
  // traffic itself never uses it.
  name: 'pip-${prefix}-ergw'
  location: location
  tags: tags
  zones: [
    '1'
    '2'
    '3'
  ]
  sku: {
    name: 'Standard'
    tier: 'Regional'
  }
  properties: {
    publicIPAllocationMethod: 'Static'
    publicIPAddressVersion: 'IPv4'
  }
}

resource gateway 'Microsoft.Network/virtualNetworkGateways@2024-05-01' = {
  name: 'ergw-${prefix}'
  location: location
  tags: tags
  properties: {
    gatewayType: 'ExpressRoute'
    sku: {
      name: sku
      tier: sku
    }
    ipConfigurations: [
      {
        name: 'default'
        properties: {
          privateIPAllocationMethod: 'Dynamic'
          subnet: {
            id: subnetId
          }
          publicIPAddress: {
            id: publicIp.id
          }
        }
      }
    ]
  }
}

resource connection 'Microsoft.Network/connections@2024-05-01' = {
  name: 'cn-${prefix}-er'
  location: location
  tags: tags
  properties: {
    connectionType: 'ExpressRoute'
    virtualNetworkGateway1: {
      id: gateway.id
      properties: {}
    }
    peer: {
      id: circuitId
    }
    authorizationKey: empty(authorizationKey) ? null : authorizationKey
    routingWeight: 0
  }
}

resource gatewayDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: gateway
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

resource connectionDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: connection
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

resource publicIpDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: publicIp
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

output gatewayId string = gateway.id
output connectionId string = connection.id
