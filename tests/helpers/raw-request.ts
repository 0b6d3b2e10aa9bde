import http from 'node:http';

export interface RawAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
}

/**
 * A POST (by default to the token route) that sends its headers, announcing `announcedBytes` of multipart
 * body, and at most `prefix` of the body: only an answer that needs no body can come back.
 */
export function announceUpload(
  port: number,
  headers: Record<string, string>,
  announcedBytes: number,
  prefix: string | Buffer = '',
  path = '/v1/biz-tokens',
): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const request = http.request({
      host: '127.0.0.1',
      port,
      method: 'POST',
      path,
      agent: false,
      headers: {
        'Content-Type': 'multipart/form-data; boundary=x',
        ...headers,
        'Content-Length': String(announcedBytes),
      },
    });
    request.on('response', (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => {
        request.destroy();
        resolve({
          status: response.statusCode ?? 0,
          headers: response.headers,
          text: Buffer.concat(chunks).toString('utf8'),
        });
      });
    });
    request.on('error', (error) => (request.destroyed ? undefined : reject(error)));
    if (prefix.length > 0) request.write(prefix);
    else request.flushHeaders();
  });
}
