// Opens the incidents page of a running openQA web UI in headless Chromium (Debian's, driven by
// playwright-core: no browser download), reads what a user sees, clicks through to one incident's
// explanation and saves screenshots. Prints one JSON line for perl/real/40-page.t to assert on.
//
//   node incidents-page.js <openqa_url> <incident_to_open> <list_png> <incident_png>
'use strict';
const { chromium } = require('playwright-core');
const fs = require('fs');
const os = require('os');
const path = require('path');

async function main() {
  const [url, incident, listPng, incidentPng] = process.argv.slice(2);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'ig-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
    viewport: { width: 1280, height: 800 },
  });
  const out = { errors: [] };
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.on('pageerror', (e) => out.errors.push(String(e)));
    const res = await page.goto(`${url}/incident_gate`, { waitUntil: 'load' });
    out.list_status = res.status();
    out.title = await page.title();
    out.navbar = await page.locator('nav.navbar #all_tests').count();
    out.rows = await page.$$eval('#ig-incidents tbody tr', (rows) => rows.map((r) => ({
      incident: Number(r.dataset.incident),
      state: r.dataset.state,
      label: r.querySelector('.ig-state').textContent.trim(),
    })));
    await page.screenshot({ path: listPng, fullPage: true });

    // the filter form, as a user uses it
    await page.selectOption('#ig-state', 'failed');
    await Promise.all([page.waitForNavigation(), page.click('#ig-apply')]);
    out.failed_filter = await page.$$eval('#ig-incidents tbody tr', (rows) => rows.map((r) => Number(r.dataset.incident)));
    await page.fill('#ig-search', String(incident));
    await page.selectOption('#ig-state', '');
    await Promise.all([page.waitForNavigation(), page.click('#ig-apply')]);
    out.search = await page.$$eval('#ig-incidents tbody tr', (rows) => rows.map((r) => Number(r.dataset.incident)));

    await Promise.all([page.waitForNavigation(), page.click(`#ig-incident-${incident} a.ig-incident-link`)]);
    out.incident_url = page.url();
    await page.waitForSelector('#ig-decisions, #ig-no-decisions');
    out.heading = (await page.locator('h2').first().textContent()).replace(/\s+/g, ' ').trim();
    out.result = (await page.locator('#ig-result').count()) ? (await page.locator('#ig-result').textContent()).trim() : null;
    out.blocking = await page.$$eval('#ig-counting tr.table-danger', (rows) => rows.map((r) => Number(r.dataset.job)));
    out.blocking_links = await page.$$eval('#ig-counting tr.table-danger a', (as) => as.map((a) => a.getAttribute('href')));
    out.deliveries = await page.$$eval('#ig-decisions li.ig-delivery', (lis) => lis.map((li) => ({
      sink: li.dataset.sink, state: li.dataset.state, text: li.textContent.replace(/\s+/g, ' ').trim(),
    })));
    out.contacts = await page.$$eval('#ig-contacts li', (lis) => lis.map((li) => li.textContent.replace(/\s+/g, ' ').trim()));
    out.accepted = await page.$$eval('#ig-accepted a.ig-comment-link', (as) => as.map((a) => a.getAttribute('href')));
    await page.screenshot({ path: incidentPng, fullPage: true });
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => { process.stderr.write(`${e.stack || e}\n`); process.exit(1); });
