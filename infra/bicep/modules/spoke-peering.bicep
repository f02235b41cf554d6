// Spoke-to-hub peering. It uses the hub's ExpressRoute gateway, so the spoke's
// prefix is advertised to the hospitals; it is deployed after the gateway exists.

@description('Name of the spoke virtual network.')
param spokeName string

@description('Resource id of the hub virtual network.')
param hubId string

resource spoke 'Microsoft.Network/virtualNetworks@2024-05-01' existing = {
  name: spokeName
}

resource spokeToHub 'Microsoft.Network/virtualNetworks/virtualNetworkPeerings@2024-05-01' = {
  parent: spoke
  name: 'to-hub'
  properties: {
    remoteVirtualNetwork: {
      id: hubId
    }
    allowVirtualNetworkAccess: true
    allowForwardedTraffic: true
    useRemoteGateways: true
  }
}
