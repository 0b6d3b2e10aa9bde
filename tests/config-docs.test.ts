import { readFileSync } from 'node:fs';
import path from 'node:path';
import { documentedVariables } from '../src/config/schema';
import { ERROR_CATALOG } from '../src/errors/error-catalog';
import { verdictTableMarkdown } from '../src/openapi/openapi-document';

const root = path.join(__dirname, '..');
const readme = readFileSync(path.join(root, 'README.md'), 'utf8');
const operations = readFileSync(path.join(root, 'docs', 'operations.md'), 'utf8');
const envExample = readFileSync(path.join(root, '.env.example'), 'utf8');
const variables = documentedVariables();

describe('the configuration documents', () => {
  test("when the README lists the configuration, then its rows are exactly the schema's variables, defaults and meanings", () => {
    const start = readme.indexOf('\n## Configuration');
    const section = readme.slice(start, readme.indexOf('\n## ', start + 1));
    const rows = [...section.matchAll(/^\| `([A-Z0-9_]+)` \| (.+?) \| (.+) \|$/gm)].map(
      ([, name, shownDefault, meaning]) => ({
        name,
        defaultValue: shownDefault === '(unset)' ? undefined : shownDefault?.replace(/^`|`$/g, ''),
        description: meaning?.replace(/\\\|/g, '|'),
      }),
    );
    expect(rows.sort((a, b) => String(a.name).localeCompare(String(b.name)))).toEqual(
      [...variables].sort((a, b) => a.name.localeCompare(b.name)),
    );
  });

  test('when .env.example lists the configuration, then every variable stands with its default under its meaning, and nothing else', () => {
    const entries = [...envExample.matchAll(/^# (.+)\n# ([A-Z0-9_]+)=(.*)$/gm)].map(
      ([, description, name, defaultValue]) => ({
        name,
        defaultValue: defaultValue === '' ? undefined : defaultValue,
        description,
      }),
    );
    expect(entries).toEqual(variables);
    const assigned = [...envExample.matchAll(/^#? ?([A-Z0-9_]+)=/gm)].map(([, name]) => name);
    expect(assigned).toEqual(variables.map((variable) => variable.name));
  });

  test('when an error is a 5xx, then the operations runbook has a row for it', () => {
    const runbook = operations.slice(operations.indexOf('\n## Runbook'), operations.indexOf('\n# Deployment'));
    const serverErrors = Object.entries(ERROR_CATALOG).filter(([, entry]) => entry.status >= 500);
    expect(serverErrors.length).toBeGreaterThan(3);
    for (const [code, entry] of serverErrors) expect(runbook).toContain(`| \`${code}\` (${entry.status}) |`);
  });
});

describe('the verdict table in the README', () => {
  test('when the README shows the verdicts, then its table is exactly the one the service decides with', () => {
    const start = readme.indexOf("| FaceID's result | verdict |");
    expect(start).toBeGreaterThan(0);
    const table = readme.slice(start).split('\n\n')[0];
    expect(table).toBe(verdictTableMarkdown());
  });
});
