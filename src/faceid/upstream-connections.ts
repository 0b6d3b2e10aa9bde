import net, { type Socket } from 'node:net';
import tls from 'node:tls';
import { AnswerReader } from './answer-reader';

export type PostOutcome =
  | { kind: 'answer'; status: number; body: Buffer }
  /** Not an HTTP/1.1 answer, or one whose body passed the limit (the connection was dropped, not read on). */
  | { kind: 'unreadable'; status: number }
  /** No complete answer: the connection failed, was refused, or closed too early (`ECONNRESET`). */
  | { kind: 'network'; code: string };

/** What may cut an exchange short: it is shown the socket in flight and destroys it when it must. */
export interface Interrupter {
  watch(target: { destroy(): void } | undefined): void;
}

export interface UpstreamConnectionsOptions {
  /** Connections kept open between calls; calls in flight are bounded by the caller (the upstream gate). */
  maxIdle: number;
  maxAnswerBytes: number;
}

/**
 * How long a connection may wait unused and still be reused. Shorter than the keep-alive timeouts servers
 * commonly use (Node's 5 s, nginx's 75 s), so no request is sent on a connection the server is just closing.
 */
const IDLE_MS = 4_000;

/**
 * Kept-alive HTTP/1.1 connections to one origin, for POSTs of a body already in memory: the request is
 * written as one head and the body's buffers in a single vectored write, and the answer is read by
 * AnswerReader. Written by hand rather than with node:http's client and agent, which cost about a tenth of
 * the service's CPU per token request in request objects, listeners and header handling (see BENCHMARKS.md).
 */
export class UpstreamConnections {
  private readonly idle: Connection[] = [];
  private readonly open = new Set<Connection>();
  private readonly connect: () => Socket;
  private readonly sweep: NodeJS.Timeout;
  private closed = false;

  constructor(
    origin: URL,
    private readonly options: UpstreamConnectionsOptions,
  ) {
    const host = origin.hostname.replace(/^\[(.*)\]$/, '$1');
    const secure = origin.protocol === 'https:';
    const port = Number(origin.port || (secure ? 443 : 80));
    if (secure) {
      // One context, and the latest session offered back: a new connection (after an idle close, a
      // `Connection: close` or a drop) resumes instead of making a full handshake, as https.Agent did.
      const secureContext = tls.createSecureContext();
      const servername = net.isIP(host) === 0 ? host : undefined;
      let session: Buffer | undefined;
      this.connect = () => {
        const socket = tls.connect({ host, port, servername, secureContext, session, ALPNProtocols: ['http/1.1'] });
        socket.on('session', (ticket: Buffer) => (session = ticket));
        return socket;
      };
    } else this.connect = () => net.connect({ host, port });
    // Twice per idle period: a connection unused for IDLE_MS is closed within half as long again.
    this.sweep = setInterval(() => this.closeStale(), IDLE_MS / 2).unref();
  }

  /** One request: `head` (request line and headers, ending in an empty line), then `body`, in one write. */
  post(head: string, body: readonly Buffer[], interrupter: Interrupter): Promise<PostOutcome> {
    return new Promise((settle) => {
      const connection = this.take();
      const exchange = new Exchange(connection, this, this.options.maxAnswerBytes, settle);
      connection.exchange = exchange;
      interrupter.watch(connection.socket);
      const { socket } = connection;
      socket.cork();
      socket.write(head, 'latin1');
      for (let index = 0; index < body.length - 1; index += 1) socket.write(body[index] as Buffer);
      socket.write(body[body.length - 1] ?? '', (error) => exchange.onWritten(error ?? undefined));
      socket.uncork();
    });
  }

  /** Closes every connection, in use or not; later calls still work on new ones, closed after their answer. */
  close(): void {
    this.closed = true;
    clearInterval(this.sweep);
    for (const connection of this.open) connection.socket.destroy();
  }

  /** A connection whose answer is read and whose request is written: kept for the next call, or closed. */
  release(connection: Connection): void {
    connection.exchange = undefined;
    if (this.closed || this.idle.length >= this.options.maxIdle || !isUsable(connection.socket)) {
      connection.socket.destroy();
      return;
    }
    connection.idleSince = performance.now();
    // An idle connection does not keep the process alive, as with node:http's agent.
    connection.socket.unref();
    this.idle.push(connection);
  }

  forget(connection: Connection): void {
    this.open.delete(connection);
    const index = this.idle.indexOf(connection);
    if (index !== -1) this.idle.splice(index, 1);
  }

  /** The most recently used idle connection (the least likely to be closing), or a new one. */
  private take(): Connection {
    const now = performance.now();
    for (let connection = this.idle.pop(); connection !== undefined; connection = this.idle.pop()) {
      if (isUsable(connection.socket) && now - connection.idleSince < IDLE_MS) {
        connection.socket.ref();
        return connection;
      }
      connection.socket.destroy();
    }
    const socket = this.connect();
    socket.setNoDelay(true);
    const connection = new Connection(socket, this);
    this.open.add(connection);
    return connection;
  }

  private closeStale(): void {
    const now = performance.now();
    for (const connection of [...this.idle]) if (now - connection.idleSince >= IDLE_MS) connection.socket.destroy();
  }
}

/** Open both ways: a server that has ended its side (it may have done so with the answer) takes no more requests. */
const isUsable = (socket: Socket): boolean => !socket.destroyed && socket.writable && !socket.readableEnded;

/** A socket and the exchange it carries; its listeners stay for its whole life and speak to that exchange. */
class Connection {
  exchange: Exchange | undefined;
  idleSince = 0;
  closed = false;

  constructor(
    readonly socket: Socket,
    pool: UpstreamConnections,
  ) {
    // Bytes or an end while idle: the server has given up on the connection, or broke it.
    socket.on('data', (chunk: Buffer) => (this.exchange === undefined ? socket.destroy() : this.exchange.onData(chunk)));
    socket.on('end', () => (this.exchange === undefined ? socket.destroy() : this.exchange.onEnd()));
    socket.on('error', (error: NodeJS.ErrnoException) => this.exchange?.onError(error));
    socket.on('close', () => {
      this.closed = true;
      pool.forget(this);
      this.exchange?.onClose();
    });
  }
}

/**
 * One request on one connection. The outcome is given only once the request is fully written, or once the
 * socket is closed: a server may answer before it has read the whole body, and the body's buffers must
 * not be reused while they are still being written.
 */
class Exchange {
  private readonly reader: AnswerReader;
  private outcome: PostOutcome | undefined;
  private written = false;
  private errorCode: string | undefined;

  constructor(
    private readonly connection: Connection,
    private readonly pool: UpstreamConnections,
    maxAnswerBytes: number,
    private readonly settle: (outcome: PostOutcome) => void,
  ) {
    this.reader = new AnswerReader(maxAnswerBytes);
  }

  onData(chunk: Buffer): void {
    if (this.outcome === undefined) this.read(this.reader.push(chunk));
    // Bytes after the answer, while the body is still being written: the connection is not trusted again.
    else this.connection.socket.destroy();
  }

  onEnd(): void {
    if (this.outcome === undefined) this.read(this.reader.end());
  }

  onError(error: NodeJS.ErrnoException): void {
    this.errorCode ??= error.code ?? 'UNKNOWN';
  }

  onWritten(error: NodeJS.ErrnoException | undefined): void {
    if (error !== undefined) {
      this.onError(error);
      // Written to a socket that had already closed: no close event is left to end the exchange.
      if (this.connection.closed) this.onClose();
      return;
    }
    this.written = true;
    if (this.outcome !== undefined) this.finish();
  }

  onClose(): void {
    this.outcome ??= { kind: 'network', code: this.errorCode ?? 'ECONNRESET' };
    this.connection.exchange = undefined;
    this.settle(this.outcome);
  }

  private read(step: ReturnType<AnswerReader['push']>): void {
    switch (step) {
      case 'more':
        return;
      case 'done':
        this.outcome = { kind: 'answer', status: this.reader.status, body: this.reader.body };
        break;
      case 'too-large':
      case 'malformed':
        this.outcome = { kind: 'unreadable', status: this.reader.status };
        break;
      case 'cut-short':
        // A dropped connection, not a broken answer. It is retried like one even when part of the answer came:
        // FaceID may then have issued a token that nobody receives, as it would on the app's own retry, and an
        // unused biz_token expires unused. @see ../shared/seed/App-GetBizToken.md (返回值说明: biz_token 有效期)
        this.outcome = { kind: 'network', code: 'ECONNRESET' };
        break;
    }
    if (this.written) this.finish();
    // Answered before the body was written: a connection that stays open takes the rest of it (the outcome
    // waits for the write); any other is closed, and the outcome waits for the close.
    else if (this.outcome.kind !== 'answer' || !this.reader.reusable) this.connection.socket.destroy();
  }

  private finish(): void {
    const outcome = this.outcome as PostOutcome;
    if (outcome.kind === 'answer' && this.reader.reusable) this.pool.release(this.connection);
    else {
      this.connection.exchange = undefined;
      this.connection.socket.destroy();
    }
    this.settle(outcome);
  }
}
