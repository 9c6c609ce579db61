// What a real browser shows of the quotaflow dashboard (tests/serve.rs runs this with node and
// playwright-core driving Debian's headless Chromium):
//
//   node dashboard_probe.js URL SCREENSHOT_DIR
//
// It prints one JSON line per stage: `overview`, `team` (after clicking the first team), `rep`
// (after clicking that team's first rep), `explain` (the figures' explanation links, and the
// company attainment's explanation page); then waits for a line on stdin (the test wrote a new
// snapshot) and prints `after`, read once the page shows the next snapshot, without a reload.
const { chromium } = require("playwright-core");
const readline = require("readline");

const [url, shots] = process.argv.slice(2);
const say = (stage, data) => console.log(JSON.stringify({ stage, ...data }));

async function overview(page) {
  return page.evaluate(() => {
    const v = (id) => document.getElementById(id).dataset.value;
    const rows = (id, key) => [...document.querySelectorAll(`#${id} tbody tr`)].map((tr) => ({
      key: tr.dataset[key],
      values: [...tr.querySelectorAll("td[data-value]")].map((td) => td.dataset.value),
      text: tr.innerText,
    }));
    return {
      snapshot: document.body.dataset.loadedSnapshot,
      shown_snapshot: document.getElementById("snapshot").textContent,
      as_of: document.getElementById("as-of").textContent,
      period_start: document.getElementById("period-start").value,
      company: { closed_won: v("company-closed-won"), quota: v("company-quota"), expected: v("company-expected"),
                 text: document.getElementById("company-closed-won").textContent },
      teams: rows("teams", "team"),
      forecast: rows("forecast", "entity"),
      leaderboard: rows("leaderboard", "rep").map((r) => r.key),
      alerts: document.querySelectorAll("#alerts tbody tr").length,
      quality: [...document.querySelectorAll("#quality tbody tr")].map((tr) => [...tr.children].map((td) => td.textContent)),
    };
  });
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.QUOTAFLOW_CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1600 } });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(url);
    await page.waitForSelector("body[data-loaded-snapshot]", { timeout: 30000 });
    say("overview", { ...(await overview(page)), errors });

    await page.click("#teams tbody tr[data-team]");
    await page.waitForSelector("#team-panel:not([hidden]) #team-reps tbody tr", { timeout: 30000 });
    const team = await page.evaluate(() => ({
      team: document.getElementById("team-name").textContent,
      reps: [...document.querySelectorAll("#team-reps tbody tr")].map((tr) => ({
        rep: tr.dataset.rep, values: [...tr.querySelectorAll("td[data-value]")].map((td) => td.dataset.value) })),
    }));
    say("team", team);

    await page.click("#team-reps tbody tr[data-rep]");
    await page.waitForFunction((rep) => document.getElementById("rep-name").textContent === rep && !document.getElementById("rep-panel").hidden,
      team.reps[0].rep, { timeout: 30000 });
    const rep = await page.evaluate(() => ({
      rep: document.getElementById("rep-name").textContent,
      closed_won: document.getElementById("rep-closed-won").dataset.value,
      deals: [...document.querySelectorAll("#rep-deals tbody tr")].map((tr) => tr.dataset.deal),
      trend_points: (document.querySelector("#rep-trend polyline")?.getAttribute("points") || "").split(" ").filter(Boolean).length,
    }));
    await page.screenshot({ path: `${shots}/dashboard.png`, fullPage: true });
    say("rep", rep);

    // Every figure of a covered table links to its explanation; the company's attainment
    // opens as a page.
    const links = await page.evaluate(() => [...document.querySelectorAll("a.why[href]")].map((a) => ({
      href: a.getAttribute("href"), text: a.textContent, value: a.dataset.value ?? a.closest("td")?.dataset.value ?? null })));
    const why = await browser.newPage({ viewport: { width: 1400, height: 1200 } });
    why.on("pageerror", (e) => errors.push(String(e)));
    await why.goto(new URL(links.find((l) => l.href.includes("level=company")).href, url).href);
    await why.waitForSelector("body[data-explained]", { timeout: 60000 });
    const explained = await why.evaluate(() => ({
      verdict: document.body.dataset.explained, title: document.getElementById("title").textContent,
      value: document.getElementById("value").textContent,
      inputs: document.querySelectorAll("#inputs tbody tr").length,
      contributions: document.querySelectorAll("#contributions tbody tr").length,
    }));
    await why.screenshot({ path: `${shots}/explain.png`, fullPage: true });
    await why.close();
    say("explain", { links, explained, errors });

    const before = (await overview(page)).snapshot;
    await new Promise((resolve) => readline.createInterface({ input: process.stdin }).once("line", resolve));
    await page.waitForFunction((b) => document.body.dataset.loadedSnapshot !== b, before, { timeout: 60000 });
    say("after", { ...(await overview(page)), errors });
    await page.screenshot({ path: `${shots}/dashboard-after.png`, fullPage: true });
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
