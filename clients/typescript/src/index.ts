/**
 * The API-key service's `Authorize` and `KeyAdmin` clients for Node services,
 * over gRPC (HTTP/2). Messages, enums and service descriptors are generated
 * from the protos into `./gen` (`make generate`) and re-exported here.
 *
 * ```ts
 * const { authorize, keyAdmin } = createApiKeysClients({
 *   baseUrl: "http://127.0.0.1:50051",
 *   adminToken: () => currentAdminJwt(),
 * });
 * const decision = await authorize.check({ key, method: "GET", path: "/api/v4/campaigns" });
 * ```
 */
import { type Client, type Interceptor, createClient } from "@connectrpc/connect";
import { type GrpcTransportOptions, createGrpcTransport } from "@connectrpc/connect-node";

import { Authorize } from "./gen/voiso/apikeys/v1/authorize_pb.js";
import { KeyAdmin } from "./gen/voiso/apikeys/v1/key_admin_pb.js";

export * from "./gen/voiso/apikeys/v1/api_key_pb.js";
export * from "./gen/voiso/apikeys/v1/authorize_pb.js";
export * from "./gen/voiso/apikeys/v1/key_admin_pb.js";

/** Where the service is and how to reach it. */
export interface ApiKeysClientOptions {
  /** `http://host:port`, or `https://host:port` when the server serves TLS. */
  baseUrl: string;
  /**
   * The admin token (a JWT from the identity service) that `KeyAdmin` calls
   * carry as `authorization: Bearer <token>`; a function is asked on every
   * call, so a refreshed token is picked up. `Authorize` calls carry none.
   */
  adminToken?: string | (() => string);
  /** Further transport settings: TLS (`nodeOptions`), timeouts, interceptors. */
  transport?: Omit<GrpcTransportOptions, "baseUrl">;
}

/** Both services' clients, sharing one HTTP/2 connection. */
export interface ApiKeysClients {
  authorize: Client<typeof Authorize>;
  keyAdmin: Client<typeof KeyAdmin>;
}

/** Clients of both services at `options.baseUrl`. */
export function createApiKeysClients(options: ApiKeysClientOptions): ApiKeysClients {
  const interceptors = [...(options.transport?.interceptors ?? [])];
  if (options.adminToken !== undefined) {
    interceptors.push(adminBearer(options.adminToken));
  }
  const transport = createGrpcTransport({
    ...options.transport,
    baseUrl: options.baseUrl,
    interceptors,
  });
  return {
    authorize: createClient(Authorize, transport),
    keyAdmin: createClient(KeyAdmin, transport),
  };
}

// Only KeyAdmin calls: the admin token has no business on the Check path.
function adminBearer(token: string | (() => string)): Interceptor {
  return (next) => async (request) => {
    if (request.service.typeName === KeyAdmin.typeName) {
      const current = typeof token === "function" ? token() : token;
      request.header.set("authorization", `Bearer ${current}`);
    }
    return next(request);
  };
}
