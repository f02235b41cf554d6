// Microsoft Sentinel analytics rules for hoshu. The KQL lives in
// infra/sentinel/*.kql (loaded verbatim; {{name}} placeholders are filled
// here); a test checks every column a rule uses exists in HoshuAudit_CL.

param workspaceName string

@description('Second-factor failures by one account within the window that raise an alert.')
@minValue(2)
param mfaFailureThreshold int

@description('Window for counting second-factor failures, in minutes.')
@minValue(5)
param mfaWindowMinutes int

@description('Minutes a gateway may stay disconnected before an alert.')
@minValue(5)
param gatewayDisconnectMinutes int

@description('Minutes without a signed audit checkpoint before an alert (a few checkpoint intervals).')
@minValue(15)
param checkpointMissingMinutes int

@description('Create the rules enabled (false: deploy them disabled for tuning).')
param enabled bool

// How often the rules run; the gateway rule looks back exactly one interval past its threshold.
var runIntervalMinutes = 5

// Entities Sentinel extracts from each alert (the columns must be in the rule's output).
var account = {
  entityType: 'Account'
  fieldMappings: [
    {
      identifier: 'Name'
      columnName: 'ActorUsername'
    }
  ]
}
var sourceIp = {
  entityType: 'IP'
  fieldMappings: [
    {
      identifier: 'Address'
      columnName: 'SrcIpAddr'
    }
  ]
}
var instrument = {
  entityType: 'Host'
  fieldMappings: [
    {
      identifier: 'HostName'
      columnName: 'TargetHostname'
    }
  ]
}
var broker = {
  entityType: 'Host'
  fieldMappings: [
    {
      identifier: 'HostName'
      columnName: 'DvcHostname'
    }
  ]
}

var rules = [
  {
    key: 'mfa-failures'
    displayName: 'hoshu: second-factor failure burst or account lockout'
    description: 'Repeated TOTP failures or a lockout for one account (GUIDELINES rows 7, 27).'
    severity: 'High'
    tactics: [
      'CredentialAccess'
    ]
    frequency: 'PT${runIntervalMinutes}M'
    period: 'PT${mfaWindowMinutes}M'
    query: replace(replace(loadTextContent('../../sentinel/mfa-failures.kql'), '{{mfaWindowMinutes}}', string(mfaWindowMinutes)), '{{mfaFailureThreshold}}', string(mfaFailureThreshold))
    suppress: false
    entities: [
      account
      sourceIp
    ]
  }
  {
    key: 'session-outside-grant'
    displayName: 'hoshu: session started without a grant'
    description: 'Must never happen: no grant, no path (DESIGN rule 3; GUIDELINES rows 9, 13, 19).'
    severity: 'High'
    tactics: [
      'InitialAccess'
      'PrivilegeEscalation'
    ]
    frequency: 'PT${runIntervalMinutes}M'
    period: 'PT${runIntervalMinutes}M'
    query: loadTextContent('../../sentinel/session-outside-grant.kql')
    suppress: false
    entities: [
      account
      sourceIp
      instrument
    ]
  }
  {
    key: 'emergency-access'
    displayName: 'hoshu: emergency access in progress'
    description: 'Break-glass access approved only afterwards; review it (GUIDELINES row 19).'
    severity: 'Medium'
    tactics: [
      'InitialAccess'
    ]
    frequency: 'PT${runIntervalMinutes}M'
    period: 'PT${runIntervalMinutes}M'
    query: loadTextContent('../../sentinel/emergency-access.kql')
    suppress: false
    entities: [
      account
      sourceIp
      instrument
    ]
  }
  {
    key: 'inbound-file-transfer'
    displayName: 'hoshu: file transferred into a hospital'
    description: 'A file entered a hospital network through a session (GUIDELINES row 17).'
    severity: 'Medium'
    tactics: [
      'CommandAndControl'
      'LateralMovement'
    ]
    frequency: 'PT${runIntervalMinutes}M'
    period: 'PT${runIntervalMinutes}M'
    query: loadTextContent('../../sentinel/inbound-file-transfer.kql')
    suppress: false
    entities: [
      account
      sourceIp
      instrument
    ]
  }
  {
    key: 'gateway-disconnected'
    displayName: 'hoshu: hospital gateway disconnected'
    description: 'A gateway tunnel stayed down past the threshold (GUIDELINES rows 1, 2).'
    severity: 'Medium'
    tactics: [
      'Impact'
    ]
    frequency: 'PT${runIntervalMinutes}M'
    period: 'PT${gatewayDisconnectMinutes + runIntervalMinutes}M'
    query: replace(replace(loadTextContent('../../sentinel/gateway-disconnected.kql'), '{{gatewayDisconnectMinutes}}', string(gatewayDisconnectMinutes)), '{{runIntervalMinutes}}', string(runIntervalMinutes))
    suppress: false
    entities: []
  }
  {
    key: 'audit-checkpoint'
    displayName: 'hoshu: audit checkpoint missing or verification failed'
    description: 'The hash-chained log lacks signed checkpoints or failed verification (GUIDELINES rows 25, 29).'
    severity: 'High'
    tactics: [
      'DefenseEvasion'
    ]
    frequency: 'PT15M'
    period: 'P1D'
    query: replace(loadTextContent('../../sentinel/audit-checkpoint.kql'), '{{checkpointMissingMinutes}}', string(checkpointMissingMinutes))
    suppress: true
    entities: [
      broker
    ]
  }
]

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: workspaceName
}

resource alertRules 'Microsoft.SecurityInsights/alertRules@2024-03-01' = [for rule in rules: {
  name: guid(workspace.id, 'hoshu', rule.key)
  scope: workspace
  kind: 'Scheduled'
  properties: {
    displayName: rule.displayName
    description: rule.description
    severity: rule.severity
    enabled: enabled
    query: rule.query
    queryFrequency: rule.frequency
    queryPeriod: rule.period
    triggerOperator: 'GreaterThan'
    triggerThreshold: 0
    suppressionEnabled: rule.suppress
    suppressionDuration: 'PT1H'
    tactics: rule.tactics
    entityMappings: empty(rule.entities) ? null : rule.entities
    eventGroupingSettings: {
      aggregationKind: 'AlertPerResult'
    }
    incidentConfiguration: {
      createIncident: true
      groupingConfiguration: {
        enabled: true
        reopenClosedIncident: false
        lookbackDuration: 'PT5H'
        matchingMethod: 'AllEntities'
        groupByEntities: []
        groupByAlertDetails: []
        groupByCustomDetails: []
      }
    }
  }
}]

output ruleNames array = [for (rule, i) in rules: alertRules[i].name]
