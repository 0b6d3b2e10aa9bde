import type { IncomingMessage, ServerResponse } from 'node:http';
import { Webhook } from 'standardwebhooks';
import { readBody, readJson, send, sendEmpty } from './sandbox-http';

/**
 * A local receiver for the service's webhooks (`WEBHOOK_URL=<sandbox>/sandbox/webhooks`), so a developer
 * sees each delivery, whether its Standard Webhooks signature holds, and how the service copes with a
 * receiver that is down.
 */
export const WEBHOOKS_PATH = '/sandbox/webhooks';
export const WEBHOOKS_STATUS_PATH = '/sandbox/webhooks/status';

/** One delivery as received; the same object in `GET /sandbox/webhooks` and in `Sandbox.webhooks()`. */
export interface WebhookDelivery {
  webhook_id: string | null;
  webhook_timestamp: string | null;
  webhook_signature: string | null;
  /** The body parsed as JSON; null when it was not JSON (then `body_text` holds it) or too large. */
  body: unknown;
  body_text?: string;
  /** ISO 8601. */
  received_at: string;
  /** What the sink answered: 204 unless `PUT /sandbox/webhooks/status` said otherwise. */
  status: number;
  /** A 2xx answer: the delivery counts as done for the sender. */
  accepted: boolean;
  /** Only when the sandbox has a webhook secret: the signature holds and its timestamp is within 5 minutes. */
  signature_valid?: boolean;
}

export interface WebhookSink {
  receive: (req: IncomingMessage, res: ServerResponse) => Promise<void>;
  list: (req: IncomingMessage, res: ServerResponse) => void;
  clear: (req: IncomingMessage, res: ServerResponse) => void;
  putStatus: (req: IncomingMessage, res: ServerResponse) => Promise<void>;
  /** The deliveries kept, oldest first (copies). */
  deliveries: () => WebhookDelivery[];
  clearDeliveries: () => void;
  /** The status the next `times` deliveries get (all of them when times is undefined); 204 resets. */
  setStatus: (status: number, times?: number) => void;
}

const KEPT = 100;
const MAX_BODY_BYTES = 1024 * 1024;
const ACCEPTED = 204;
const HEADERS = ['webhook-id', 'webhook-timestamp', 'webhook-signature'] as const;

/** @param secret `whsec_` + base64, as the service's WEBHOOK_SECRET; a malformed one throws here, at start. */
export function createWebhookSink(secret: string | undefined): WebhookSink {
  const verifier = secret === undefined ? undefined : new Webhook(secret);
  const kept: WebhookDelivery[] = [];
  let failing: { status: number; remaining: number | undefined } | undefined;

  /** The status for this delivery, counting it against `times`. */
  function nextStatus(): number {
    if (failing === undefined) return ACCEPTED;
    const { status, remaining } = failing;
    if (remaining !== undefined) failing = remaining > 1 ? { status, remaining: remaining - 1 } : undefined;
    return status;
  }

  function setStatus(status: number, times?: number): void {
    failing = status === ACCEPTED || times === 0 ? undefined : { status, remaining: times };
  }

  function record(delivery: WebhookDelivery): void {
    kept.push(delivery);
    if (kept.length > KEPT) kept.shift();
  }

  return {
    receive: async (req, res) => {
      const receivedAt = new Date().toISOString();
      const [id, timestamp, signature] = HEADERS.map((name) => header(req, name));
      const base = {
        webhook_id: id ?? null,
        webhook_timestamp: timestamp ?? null,
        webhook_signature: signature ?? null,
        received_at: receivedAt,
      };
      const raw = await readBody(req, MAX_BODY_BYTES);
      if (raw === 'malformed') return;
      if (raw === 'too-large') {
        record({ ...base, body: null, status: 413, accepted: false });
        return send(res, { status: 413, body: { error: 'Request Entity Too Large' } });
      }
      const text = raw.toString('utf8');
      const body = parseJson(text);
      const status = nextStatus();
      record({
        ...base,
        body: body === undefined ? null : body,
        ...(body === undefined ? { body_text: text } : {}),
        status,
        accepted: status >= 200 && status < 300,
        ...(verifier === undefined
          ? {}
          : { signature_valid: signatureValid(verifier, raw, [id, timestamp, signature]) }),
      });
      if (status === ACCEPTED) return sendEmpty(res, status);
      return send(res, { status, body: { status, note: 'answered by PUT /sandbox/webhooks/status' } });
    },
    list: (_req, res) => send(res, { status: 200, body: { deliveries: kept } }),
    clear: (_req, res) => {
      kept.length = 0;
      send(res, { status: 200, body: { deliveries: [] } });
    },
    putStatus: async (req, res) => {
      const parsed = parseStatusBody(await readJson(req));
      if (typeof parsed === 'string') return send(res, { status: 400, body: { error: parsed } });
      setStatus(parsed.status, parsed.times);
      send(res, { status: 200, body: { status: failing?.status ?? ACCEPTED, times: failing?.remaining ?? null } });
    },
    deliveries: () => kept.map((delivery) => ({ ...delivery })),
    clearDeliveries: () => {
      kept.length = 0;
    },
    setStatus,
  };
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value.join(', ') : value;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/**
 * The library's own check, over the body's bytes as received: the signature, and a timestamp within its
 * 5-minute tolerance. Without its JSON parsing, so a signed body that is not JSON still counts as signed.
 */
function signatureValid(verifier: Webhook, payload: Buffer, values: Array<string | undefined>): boolean {
  const [id = '', timestamp = '', signature = ''] = values;
  const headers = { 'webhook-id': id, 'webhook-timestamp': timestamp, 'webhook-signature': signature };
  try {
    verifier.verify(payload, headers, { jsonParse: false });
    return true;
  } catch {
    return false;
  }
}

/** `{"status": 503, "times": 2}`: any status from 200 to 599; `times` a positive count, or absent for all. */
function parseStatusBody(body: unknown): { status: number; times: number | undefined } | string {
  if (typeof body !== 'object' || body === null) return 'BAD_ARGUMENTS: body';
  const { status, times } = body as Record<string, unknown>;
  if (typeof status !== 'number' || !Number.isInteger(status) || status < 200 || status > 599) {
    return 'BAD_ARGUMENTS: status';
  }
  if (times !== undefined && (typeof times !== 'number' || !Number.isInteger(times) || times < 1)) {
    return 'BAD_ARGUMENTS: times';
  }
  return { status, times };
}
