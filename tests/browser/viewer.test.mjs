// The viewer in a real browser: upload a slice, wait for the overlay, move the opacity slider
// and check that the canvas pixels change; save a screenshot. Started by the Rust integration
// test `serve::viewer_in_a_real_browser`, which runs the server and passes
// COVSEG_URL, COVSEG_SLICE, COVSEG_SCREENSHOT and CHROMIUM.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const { COVSEG_URL, COVSEG_SLICE, COVSEG_SCREENSHOT, CHROMIUM } = process.env;

test("upload a slice, see the overlay, move the opacity slider", async () => {
  assert.ok(COVSEG_URL && COVSEG_SLICE && CHROMIUM, "COVSEG_URL, COVSEG_SLICE and CHROMIUM must be set");
  // A fresh profile each run; the background-networking flags keep a closed network quiet.
  const profile = mkdtempSync(join(tmpdir(), "covseg-chromium-"));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(COVSEG_URL);
    await page.getByText("not a medical device").first().waitFor();
    await page.setInputFiles("#file", COVSEG_SLICE);
    await page.waitForSelector("body[data-state=segmented]", { timeout: 60000 });
    const canvasPixels = () =>
      page.evaluate(() => {
        const c = document.getElementById("canvas");
        return Array.from(c.getContext("2d").getImageData(0, 0, c.width, c.height).data);
      });
    const before = await canvasPixels();
    assert.ok(before.length > 0, "the canvas is empty");
    assert.ok(before.some((v, i) => i % 4 !== 3 && v > 0), "the canvas is black");
    const share = await page.textContent("#all-share");
    assert.match(share, /%$/);
    const version = await page.textContent("#version");
    assert.match(version, /^[0-9a-f]{16}$/);
    // Opacity 50 → 100: every overlaid pixel takes its class colour.
    await page.locator("#opacity").fill("100");
    await page.waitForFunction(() => Number(document.getElementById("canvas").dataset.drawn) >= 2);
    const after = await canvasPixels();
    const changed = before.filter((v, i) => v !== after[i]).length;
    assert.ok(changed > 0, "moving the opacity slider changed no pixel");
    if (COVSEG_SCREENSHOT) await page.screenshot({ path: COVSEG_SCREENSHOT, fullPage: true });
    assert.deepEqual(errors, [], "the page threw errors");
  } finally {
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
  }
});
