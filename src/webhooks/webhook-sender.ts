import http from 'node:http';
import https from 'node:https';
import axios, { type AxiosInstance, isAxiosError } from 'axios';
import { Webhook } from 'standardwebhooks';

/** One pending webhook: its id stays the same across attempts (Standard Webhooks' `webhook-id`). */
export interface Delivery {
  webhookId: string;
  /** The JSON body, fixed when the event happened. */
  body: string;
  /** When the event was queued (ms), for the oldest-pending metric. */
  queuedAt: number;
}

export type AttemptResult = { delivered: true; status: number } | { delivered: false; reason: string };

/** A 2xx within this time ends a delivery. @see CONTRACT section 7.3 */
const ATTEMPT_TIMEOUT_MS = 10_000;
/** The receiver's answer is not used; a little is read so the connection can be kept. */
const MAX_RESPONSE_BYTES = 16 * 1024;

/** Signs each attempt as Standard Webhooks says and POSTs it; never throws. */
export interface WebhookSender {
  attempt(delivery: Delivery): Promise<AttemptResult>;
  close(): void;
}

export function createWebhookSender(url: string, secret: string): WebhookSender {
  const signer = new Webhook(secret);
  const agents = { http: new http.Agent({ keepAlive: true }), https: new https.Agent({ keepAlive: true }) };
  const client: AxiosInstance = axios.create({
    httpAgent: agents.http,
    httpsAgent: agents.https,
    timeout: ATTEMPT_TIMEOUT_MS,
    maxRedirects: 0,
    maxContentLength: MAX_RESPONSE_BYTES,
    responseType: 'text',
    transformResponse: (data: unknown) => data,
    validateStatus: () => true,
  });
  return {
    async attempt(delivery) {
      const sentAt = new Date();
      const headers = {
        'Content-Type': 'application/json',
        'webhook-id': delivery.webhookId,
        'webhook-timestamp': String(Math.floor(sentAt.getTime() / 1000)),
        'webhook-signature': signer.sign(delivery.webhookId, sentAt, delivery.body),
      };
      try {
        const response = await client.post(url, delivery.body, { headers });
        return response.status >= 200 && response.status < 300
          ? { delivered: true, status: response.status }
          : { delivered: false, reason: `HTTP ${response.status}` };
      } catch (error) {
        const code = isAxiosError(error) ? error.code : undefined;
        return { delivered: false, reason: code ?? 'no answer' };
      }
    },
    close() {
      agents.http.destroy();
      agents.https.destroy();
    },
  };
}
