// Fastify's schema validation (AJV) reports errors as JSON pointers and keywords; OpenAI clients
// expect one message naming one parameter. This picks the most specific AJV error (the deepest
// path; a broken constraint before a type mismatch of another union branch) and words it.
import type { FastifySchemaValidationError } from 'fastify';
import { badRequest, type ApiError } from './errors.js';

/** '/messages/0/role' → 'messages[0].role'. */
export function paramFromPointer(pointer: string): string {
  let out = '';
  for (const raw of pointer.split('/').slice(1)) {
    const seg = raw.replaceAll('~1', '/').replaceAll('~0', '~');
    if (/^\d+$/.test(seg)) out += `[${seg}]`;
    else out += out === '' ? seg : `.${seg}`;
  }
  return out;
}

function join(parent: string, child: string): string {
  return parent === '' ? child : `${parent}.${child}`;
}

function str(v: unknown): string {
  return typeof v === 'string' ? v : JSON.stringify(v);
}

function describeError(e: FastifySchemaValidationError): string {
  const p = e.params;
  switch (e.keyword) {
    case 'enum':
      return `must be one of ${(p.allowedValues as unknown[]).map(str).join(', ')}`;
    case 'const':
      return `must be ${str(p.allowedValue)}`;
    case 'maxItems':
      return `must have at most ${str(p.limit)} items`;
    case 'minItems':
      return `must have at least ${str(p.limit)} item(s)`;
    case 'maxLength':
      return `must be at most ${str(p.limit)} characters long`;
    case 'minLength':
      return str(p.limit) === '1' ? 'must not be empty' : `must be at least ${str(p.limit)} characters long`;
    case 'pattern':
      return `has an invalid format (must match ${str(p.pattern)})`;
    default:
      return e.message ?? 'is invalid';
  }
}

function pathOf(e: FastifySchemaValidationError): string {
  const base = paramFromPointer(e.instancePath);
  if (e.keyword === 'required') return join(base, str(e.params.missingProperty));
  return base;
}

const COMBINATORS = new Set(['anyOf', 'oneOf', 'allOf', 'if', 'not']);

export function validationError(errors: FastifySchemaValidationError[], context: string | undefined): ApiError {
  const concrete = errors.filter((e) => !COMBINATORS.has(e.keyword));
  const candidates = concrete.length > 0 ? concrete : errors;
  const depth = (e: FastifySchemaValidationError): number => e.instancePath.split('/').length;
  const deepest = Math.max(...candidates.map(depth));
  const atDeepest = candidates.filter((e) => depth(e) === deepest);
  const first = atDeepest.find((e) => e.keyword !== 'type') ?? atDeepest[0];
  if (!first) return badRequest('The request is invalid', null, 'invalid_value');

  const param = pathOf(first);
  const where = context === 'body' || context === undefined ? '' : ` (in the ${context})`;
  if (first.keyword === 'required') {
    return badRequest(`Missing required parameter: '${param}'${where}.`, param, 'missing_required_parameter');
  }
  if (first.keyword === 'type') {
    const types = [...new Set(atDeepest.filter((e) => e.keyword === 'type').map((e) => str(e.params.type)))];
    if (param === '') return badRequest(`The request body must be a JSON ${types.join(' or ')}.`, null, 'invalid_type');
    return badRequest(`Invalid type for '${param}'${where}: must be ${types.join(' or ')}.`, param, 'invalid_type');
  }
  const label = param === '' ? 'the request body' : `'${param}'`;
  return badRequest(`Invalid value for ${label}${where}: ${describeError(first)}.`, param === '' ? null : param, 'invalid_value');
}
