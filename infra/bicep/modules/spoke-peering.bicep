// Hub-spoke peering, deployed after the ExpressRoute gateway exists: the hub
// offers its gateway (transit) and the spoke uses it, so the spoke's prefix is
// advertised to the hospitals over ExpressRoute.

@description('Name of the hub virtual network.')
param hubName string

@description('Name of the spoke virtual network.')
param spokeName string

resource hub 'Microsoft.Network/virtualNetworks@2024-05-01' existing = {
  name: hubName
}

resource spoke 'Microsoft.Network/virtualNetworks@2024-05-01' existing = {
  name: spokeName
}

resource hubToSpoke 'Microsoft.Network/virtualNetworks/virtualNetworkPeerings@2024-05-01' = {
  parent: hub
  name: 'to-spoke'
  properties: {
    remoteVirtualNetwork: {
      id: spoke.id
    }
    allowVirtualNetworkAccess: true
    allowForwardedTraffic: true
    allowGatewayTransit: true
  }
}

resource spokeToHub 'Microsoft.Network/virtualNetworks/virtualNetworkPeerings@2024-05-01' = {
  parent: spoke
  name: 'to-hub'
  dependsOn: [
    hubToSpoke
  ]
  properties: {
    remoteVirtualNetwork: {
      id: hub.id
    }
    allowVirtualNetworkAccess: true
    allowForwardedTraffic: true
    useRemoteGateways: true
  }
}
