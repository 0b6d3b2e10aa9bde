import type { RequestHandler } from 'express';
import { contextOf } from '../http/request-context';

/**
 * A body that is not valid HTTP (a malformed chunk) is refused by Node's HTTP parser, which answers its own
 * bare 400 and closes the connection before the app can answer. The request's log line and metrics then say
 * so, rather than that the client left.
 */
export const noteHttpParserRefusal: RequestHandler = (req, res, next) => {
  const socket = req.socket;
  const onError = (error: NodeJS.ErrnoException): void => {
    // A body cut short by the client's own close is the client leaving, not a malformed request.
    if (error.code?.startsWith('HPE_') === true && error.code !== 'HPE_INVALID_EOF_STATE') {
      contextOf(res).refusedByHttpParser = true;
    }
  };
  socket.on('error', onError);
  res.once('close', () => socket.off('error', onError));
  next();
};
