import path from 'node:path';
import express, { Router } from 'express';

/**
 * Readable docs of /openapi.json with the pinned swagger-ui-dist. The page loads only same-origin scripts,
 * so helmet's default Content-Security-Policy stays as it is.
 */
const PAGE = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>faceid-token-service API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body></html>`;

/**
 * Only the folder: importing swagger-ui-dist itself would load its megabyte-sized bundle into the service's
 * memory at start-up, for files that are only ever sent to browsers.
 */
const SWAGGER_UI_FILES = path.dirname(require.resolve('swagger-ui-dist/package.json'));

const INIT = `window.ui = SwaggerUIBundle({ url: '/openapi.json', dom_id: '#swagger-ui', deepLinking: true });`;

export function apiDocsRoutes(): Router {
  const router = Router();
  router.get('/docs', (_req, res) => {
    res.type('html').send(PAGE);
  });
  router.get('/docs/init.js', (_req, res) => {
    res.type('application/javascript').send(INIT);
  });
  router.use('/docs/assets', express.static(SWAGGER_UI_FILES, { index: false, maxAge: '1d' }));
  return router;
}
