// Azure Firewall Premium in the hub: IDPS in Deny mode, threat intelligence in
// Deny mode, DNS proxy for the spokes, TLS inspection when a CA certificate is
// given. Rules allow only what hoshu needs: hospitals to the broker's three
// ports, and the broker's platform dependencies. Everything else is dropped
// and logged.

param location string
param prefix string
param tags object

@description('AzureFirewallSubnet of the hub.')
param subnetId string

@description('Hospital networks (ExpressRoute): gateways and approvers.')
param hospitalAddressPrefixes array

@description('Vendor engineers\' virtual desktop networks.')
param engineerAddressPrefixes array

@description('Address range of the broker apps subnet.')
param appsSubnetPrefix string

@description('Address space of the spoke.')
param spokeAddressPrefix string

@description('Turn on TLS inspection of the broker\'s outbound HTTPS (needs a CA certificate in Key Vault).')
param enableTlsInspection bool

@description('Key Vault secret id of the intermediate CA used for TLS inspection (only with enableTlsInspection).')
param tlsInspectionCaSecretId string

@description('User-assigned identity that may read the TLS inspection CA (only with enableTlsInspection).')
param tlsInspectionIdentityId string

param workspaceId string

resource publicIp 'Microsoft.Network/publicIPAddresses@2024-05-01' = {
  // Azure Firewall needs one public address for its own management traffic; no
  // DNAT rule exists, so nothing is reachable through it from the internet.
  name: 'pip-${prefix}-firewall'
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

resource policy 'Microsoft.Network/firewallPolicies@2024-05-01' = {
  name: 'afwp-${prefix}'
  location: location
  tags: tags
  identity: enableTlsInspection ? {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${tlsInspectionIdentityId}': {}
    }
  } : null
  properties: {
    sku: {
      tier: 'Premium'
    }
    threatIntelMode: 'Deny'
    intrusionDetection: {
      mode: 'Deny'
    }
    dnsSettings: {
      enableProxy: true
    }
    transportSecurity: enableTlsInspection ? {
      certificateAuthority: {
        name: 'hoshu-inspection-ca'
        keyVaultSecretId: tlsInspectionCaSecretId
      }
    } : null
  }
}

resource rules 'Microsoft.Network/firewallPolicies/ruleCollectionGroups@2024-05-01' = {
  parent: policy
  name: 'hoshu'
  properties: {
    priority: 200
    ruleCollections: [
      {
        ruleCollectionType: 'FirewallPolicyFilterRuleCollection'
        name: 'clients-to-broker'
        priority: 100
        action: {
          type: 'Allow'
        }
        rules: [
          {
            ruleType: 'NetworkRule'
            name: 'gateway-tunnel-and-approver-api'
            description: 'Gateways dial out to the tunnel port; hospital approvers use the HTTPS API.'
            ipProtocols: [
              'TCP'
            ]
            sourceAddresses: hospitalAddressPrefixes
            destinationAddresses: [
              appsSubnetPrefix
            ]
            destinationPorts: [
              '443'
              '2223'
            ]
          }
          {
            ruleType: 'NetworkRule'
            name: 'engineer-ssh-and-api'
            description: 'Vendor engineers reach the SSH front door and the API from their virtual desktops only.'
            ipProtocols: [
              'TCP'
            ]
            sourceAddresses: engineerAddressPrefixes
            destinationAddresses: [
              appsSubnetPrefix
            ]
            destinationPorts: [
              '22'
              '443'
            ]
          }
        ]
      }
      {
        ruleCollectionType: 'FirewallPolicyFilterRuleCollection'
        name: 'broker-platform-dependencies'
        priority: 200
        action: {
          type: 'Allow'
        }
        rules: [
          {
            ruleType: 'NetworkRule'
            name: 'azure-platform'
            description: 'Entra ID sign-in for the managed identity and Azure Monitor; data paths use private endpoints.'
            ipProtocols: [
              'TCP'
            ]
            sourceAddresses: [
              spokeAddressPrefix
            ]
            destinationAddresses: [
              'AzureActiveDirectory'
              'AzureMonitor'
              'MicrosoftContainerRegistry'
              'AzureFrontDoor.FirstParty'
            ]
            destinationPorts: [
              '443'
            ]
          }
        ]
      }
    ]
  }
}

resource firewall 'Microsoft.Network/azureFirewalls@2024-05-01' = {
  name: 'afw-${prefix}'
  location: location
  tags: tags
  zones: [
    '1'
    '2'
    '3'
  ]
  dependsOn: [
    rules
  ]
  // checkov:skip=CKV_AZURE_216: threat intelligence is set to Deny on the attached firewall policy (afwp-*), which governs a policy-managed firewall; the classic per-firewall property does not apply
  properties: {
    sku: {
      name: 'AZFW_VNet'
      tier: 'Premium'
    }
    firewallPolicy: {
      id: policy.id
    }
    ipConfigurations: [
      {
        name: 'ipconfig'
        properties: {
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

resource firewallDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: firewall
  properties: {
    workspaceId: workspaceId
    logAnalyticsDestinationType: 'Dedicated'
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

output privateIp string = firewall.properties.ipConfigurations[0].properties.privateIPAddress
output policyId string = policy.id
