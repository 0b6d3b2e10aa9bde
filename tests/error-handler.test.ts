import express from 'express';
import supertest from 'supertest';
import { AppError } from '../src/errors/app-error';
import { errorHandler } from '../src/middleware/error-handler';
import { requestId } from '../src/middleware/request-id';

/**
 * The one error handler, on an app whose routes fail on purpose: a bug deep in the service cannot be
 * provoked through the real endpoint without breaking something, so the failure is staged here instead.
 */
const app = express();
app.use(requestId);
app.get('/bug', () => {
  throw new Error('connection string redis://user:hunter2@cache and stack details');
});
app.get('/not-an-error', () => {
  // Libraries sometimes throw strings.
  throw 'a string with the api_secret sk_live_123';
});
app.get('/client', () => {
  throw new AppError(400, 'BAD_ARGUMENTS', 'liveness_timeout must be a whole number from 5 to 60', {
    param: 'liveness_timeout',
  });
});
app.get('/express-4xx', () => {
  throw Object.assign(new Error('request aborted'), { status: 400 });
});
app.use(errorHandler);

describe('the error handler', () => {
  test('when a route throws an unexpected error, then the answer is a 500 problem that hides its message and stack', async () => {
    const response = await supertest(app).get('/bug');
    expect(response.status).toBe(500);
    expect(response.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(response.body).toEqual({
      type: 'about:blank',
      title: 'Internal Server Error',
      status: 500,
      code: 'INTERNAL_ERROR',
      detail: 'an internal error occurred; it has been logged',
      request_id: response.headers['x-request-id'],
    });
    expect(response.text).not.toMatch(/hunter2|stack|redis:/);
  });

  test('when a route throws something that is not an Error, then it is still a 500 problem without its text', async () => {
    const response = await supertest(app).get('/not-an-error');
    expect([response.status, response.body.code]).toEqual([500, 'INTERNAL_ERROR']);
    expect(response.text).not.toContain('sk_live_123');
  });

  test('when a route throws an AppError, then its status, code, param and detail are the answer', async () => {
    const response = await supertest(app).get('/client');
    expect(response.status).toBe(400);
    expect(response.body).toMatchObject({
      code: 'BAD_ARGUMENTS',
      param: 'liveness_timeout',
      detail: 'liveness_timeout must be a whole number from 5 to 60',
    });
  });

  test('when a library throws an error with a 4xx status, then the caller gets a 400 problem, not a 500', async () => {
    const response = await supertest(app).get('/express-4xx');
    expect([response.status, response.body.code]).toEqual([400, 'BAD_ARGUMENTS']);
  });
});
