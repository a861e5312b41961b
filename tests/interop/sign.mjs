// Signs webhook requests with the providers' own libraries, for Ferry's interop test
// (crates/ferry-core/tests/verify_interop.rs). Prints JSON on stdout.
//
//   node sign.mjs SCHEME SECRET BODYFILE [TIMESTAMP] [ID]   -> {"headers": {...}}
//   node sign.mjs --batch CASES.json                         -> [{"headers": {...}}, ...]
//
// SCHEME: standard-webhooks | svix | stripe | github | shopify | slack. CASES.json is a list
// of {"scheme", "secret", "body", "timestamp", "id"}; one process signs them all, so the test
// starts node once. Shopify and Slack publish no signing library: those two are computed with
// node:crypto as their documentation describes.

import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";

import { sign as octokitSign } from "@octokit/webhooks-methods";
import { Webhook as StandardWebhook } from "standardwebhooks";
import Stripe from "stripe";
import { Webhook as SvixWebhook } from "svix";

const stripe = new Stripe("sk_test_interop_not_a_real_key");

async function signOne({ scheme, secret, body, timestamp, id }) {
  const ts = timestamp ?? Math.floor(Date.now() / 1000);
  const msgId = id ?? "msg_interop";
  switch (scheme) {
    case "standard-webhooks":
      return {
        "webhook-id": msgId,
        "webhook-timestamp": String(ts),
        "webhook-signature": new StandardWebhook(secret).sign(msgId, new Date(ts * 1000), body),
      };
    case "svix":
      return {
        "svix-id": msgId,
        "svix-timestamp": String(ts),
        "svix-signature": new SvixWebhook(secret).sign(msgId, new Date(ts * 1000), body),
      };
    case "stripe":
      return {
        "stripe-signature": stripe.webhooks.generateTestHeaderString({
          payload: body,
          secret,
          timestamp: ts,
        }),
      };
    case "github":
      return {
        "x-hub-signature-256": await octokitSign(secret, body),
        "x-github-delivery": msgId,
      };
    case "shopify":
      return {
        "x-shopify-hmac-sha256": createHmac("sha256", secret).update(body, "utf8").digest("base64"),
        "x-shopify-webhook-id": msgId,
      };
    case "slack":
      return {
        "x-slack-request-timestamp": String(ts),
        "x-slack-signature":
          "v0=" + createHmac("sha256", secret).update(`v0:${ts}:${body}`, "utf8").digest("hex"),
      };
    default:
      throw new Error(`unknown scheme \`${scheme}\``);
  }
}

const args = process.argv.slice(2);
if (args[0] === "--batch" && args.length === 2) {
  const cases = JSON.parse(readFileSync(args[1], "utf8"));
  const out = [];
  for (const c of cases) {
    out.push({ headers: await signOne(c) });
  }
  process.stdout.write(JSON.stringify(out));
} else if (args.length >= 3 && args.length <= 5) {
  const [scheme, secret, bodyFile, timestamp, id] = args;
  const body = readFileSync(bodyFile, "utf8");
  const headers = await signOne({
    scheme,
    secret,
    body,
    timestamp: timestamp === undefined ? undefined : Number(timestamp),
    id,
  });
  process.stdout.write(JSON.stringify({ headers }));
} else {
  process.stderr.write(
    "usage: node sign.mjs SCHEME SECRET BODYFILE [TIMESTAMP] [ID] | node sign.mjs --batch CASES.json\n",
  );
  process.exit(2);
}
