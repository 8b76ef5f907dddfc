// Runs against a live server: APIKEYS_SERVER (host:port) and APIKEYS_TOKEN
// (an admin token of contact center cc-1 with every permission). The suite's
// tests/clients/test_typescript.py starts the server and runs this file.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Code, ConnectError } from "@connectrpc/connect";

import { Reason, createApiKeysClients } from "../src/index.js";

const server = process.env.APIKEYS_SERVER;
const token = process.env.APIKEYS_TOKEN;
assert.ok(server && token, "APIKEYS_SERVER and APIKEYS_TOKEN must be set");
const baseUrl = `http://${server}`;

test("a key created through KeyAdmin is listed and authorizes only its scopes", async () => {
  const { authorize, keyAdmin } = createApiKeysClients({ baseUrl, adminToken: token });

  const created = await keyAdmin.createKey({
    name: "node billing sync",
    description: "from the TypeScript client",
    scopes: ["campaigns.read"],
  });
  assert.ok(created.key);
  assert.match(created.secret, /^vsk_/);
  assert.deepEqual(created.key.scopes, ["campaigns.read"]);

  const listed = await keyAdmin.listKeys({ query: "node billing" });
  assert.equal(listed.totalSize, 1);
  assert.deepEqual(
    listed.keys.map((key) => [key.id, key.name]),
    [[created.key.id, "node billing sync"]],
  );

  const allowed = await authorize.check({
    key: created.secret,
    method: "GET",
    path: "/api/v4/campaigns",
  });
  assert.equal(allowed.allowed, true);
  assert.equal(allowed.reason, Reason.ALLOWED);
  assert.equal(allowed.keyId, created.key.id);
  assert.equal(allowed.contactCenterId, "cc-1");
  assert.equal(allowed.route, "GET /api/v4/campaigns");

  const denied = await authorize.check({
    key: created.secret,
    method: "POST",
    path: "/api/v4/campaigns/c-1/pause",
  });
  assert.equal(denied.allowed, false);
  assert.equal(denied.reason, Reason.SCOPE_MISSING);
  assert.deepEqual(denied.requiredScopes, ["campaigns.manage"]);
});

test("a malformed key is denied without a lookup", async () => {
  const { authorize } = createApiKeysClients({ baseUrl });
  const decision = await authorize.check({
    key: "not-a-key",
    method: "GET",
    path: "/api/v4/campaigns",
  });
  assert.equal(decision.allowed, false);
  assert.equal(decision.reason, Reason.KEY_MALFORMED);
});

test("KeyAdmin without an admin token is UNAUTHENTICATED", async () => {
  const { keyAdmin } = createApiKeysClients({ baseUrl });
  await assert.rejects(keyAdmin.listKeys({}), (error: unknown) => {
    assert.ok(error instanceof ConnectError);
    assert.equal(error.code, Code.Unauthenticated);
    return true;
  });
});
