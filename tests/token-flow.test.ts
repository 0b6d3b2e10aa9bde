import { postToken, startTestService, validForm, validIdcardForm, type TestService } from './helpers/test-service';

let target: TestService;
beforeAll(async () => {
  target = await startTestService();
});
afterAll(() => target.close());

describe('POST /v1/biz-tokens', () => {
  test('when a valid comparison_type 0 request arrives, then it answers 201 with only biz_token and expires_at', async () => {
    const started = Date.now();
    const response = await postToken(target, validForm());
    expect(response.status).toBe(201);
    expect(Object.keys(response.body).sort()).toEqual(['biz_token', 'expires_at']);
    expect(response.body.biz_token).toMatch(/^\d{10},[0-9a-f-]{36}$/);
    const expiresAt = Date.parse(response.body.expires_at as string);
    expect(expiresAt - started).toBeGreaterThanOrEqual(3600_000 - 1000);
    expect(expiresAt - started).toBeLessThanOrEqual(3600_000 + 1000);
    expect(response.headers['x-request-id']).toBeDefined();
  });

  test('when a valid comparison_type 1 request arrives, then the ID number is forwarded with an upper-case X', async () => {
    const form = validIdcardForm();
    form.fields.idcard_number = form.fields.idcard_number.toLowerCase();
    const response = await postToken(target, form);
    expect(response.status).toBe(201);
    expect(target.sandbox.received.at(-1)?.fields.idcard_number).toEqual(['11010519491231002X']);
  });
});
