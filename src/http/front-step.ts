import type { IncomingMessage, ServerResponse } from 'node:http';

/** A step every request passes before its route, on the token route and in Express alike (see app.ts). */
export type FrontStep = (req: IncomingMessage, res: ServerResponse, next: (error?: unknown) => void) => void;
