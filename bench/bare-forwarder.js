// @ts-check
/**
 * The peer a user would otherwise write: Express 5 + multer + form-data + axios forwarding an upload to
 * FaceID's get_biz_token, with no checks and no bounds (no size limits, no timeout, no concurrency cap, no
 * logging). `bench/run.js` measures the service against it; it is not meant to be deployed.
 *
 * Environment: PORT, FACEID_BASE_URL, FACEID_API_KEY, FACEID_API_SECRET. Prints `listening <port>` once up.
 */
'use strict';
const path = require('node:path');
const express = require('express');
const multer = require('multer');
const FormData = require('form-data');
const axios = require('axios');
// The service's own signing (built by `npm run build`), so that both targets sign the same way.
const { freshSign } = require(path.join(__dirname, '..', 'dist', 'faceid', 'sign.js'));

const PORT = Number(process.env.PORT ?? 3000);
const FACEID_BASE_URL = process.env.FACEID_BASE_URL ?? 'https://api-sgp.megvii.com';
const FACEID_API_KEY = process.env.FACEID_API_KEY ?? '';
const FACEID_API_SECRET = process.env.FACEID_API_SECRET ?? '';

const app = express();
const upload = multer({ storage: multer.memoryStorage() });

app.post('/v1/biz-tokens', upload.any(), async (req, res) => {
  const form = new FormData();
  form.append('sign', freshSign(FACEID_API_KEY, FACEID_API_SECRET));
  form.append('sign_version', 'hmac_sha1');
  for (const [name, value] of Object.entries(req.body)) form.append(name, value);
  const files = /** @type {Express.Multer.File[]} */ (req.files);
  for (const file of files)
    form.append(file.fieldname, file.buffer, { filename: file.originalname, contentType: file.mimetype });

  // axios defaults otherwise: follow-redirects transport, Node's global agent, no timeout, JSON parsed.
  const answer = await axios.post(`${FACEID_BASE_URL}/faceid/v3/sdk/get_biz_token`, form, {
    headers: form.getHeaders(),
    validateStatus: () => true,
  });
  if (answer.data !== null && typeof answer.data === 'object' && answer.data.biz_token) {
    res.status(201).json({ biz_token: answer.data.biz_token });
  } else {
    res.status(answer.status).send(answer.data);
  }
});

app.listen(PORT, (error) => {
  if (error) throw error;
  process.stdout.write(`listening ${PORT}\n`);
});
