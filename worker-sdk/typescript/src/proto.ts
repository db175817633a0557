// The public API's service definitions, loaded at run time from the package's copy of
// `proto/taskraft/v1/taskraft.proto` (scripts/gen.mjs copies it there at build time and
// generates the types in `src/gen/` with the same options as below).

import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

import type { ProtoGrpcType } from "./gen/taskraft.js";
import type { AdminDefinition } from "./gen/taskraft/v1/Admin.js";
import type { BrokerDefinition } from "./gen/taskraft/v1/Broker.js";

const protoRoot = fileURLToPath(new URL("../proto", import.meta.url));

const definition = protoLoader.loadSync("taskraft/v1/taskraft.proto", {
  includeDirs: [protoRoot],
  // Must match the flags in scripts/gen.mjs.
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
});

const loaded = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;

/** Method definitions of the `taskraft.v1.Broker` service. */
export const brokerService: BrokerDefinition = loaded.taskraft.v1.Broker.service;
/** Method definitions of the `taskraft.v1.Admin` service. */
export const adminService: AdminDefinition = loaded.taskraft.v1.Admin.service;

type MethodTypes<D, M extends keyof D> =
  D[M] extends protoLoader.MethodDefinition<infer Req, infer _Res, infer _ReqOut, infer ResOut>
    ? { req: Req; res: ResOut }
    : never;

/** The named methods of a service definition (without its string index signature). */
type Named<D> = { [K in keyof D as string extends K ? never : number extends K ? never : K]: D[K] };

/** Every unary method of both services, by name, with its request and response types. */
export type Methods = {
  [M in keyof Named<BrokerDefinition>]: MethodTypes<BrokerDefinition, M>;
} & {
  [M in keyof Named<AdminDefinition>]: MethodTypes<AdminDefinition, M>;
};

/** A method name of either service. */
export type MethodName = keyof Methods;

const byName = new Map<string, grpc.MethodDefinition<unknown, unknown>>();
for (const service of [brokerService, adminService]) {
  for (const [name, def] of Object.entries(service)) {
    byName.set(name, def as grpc.MethodDefinition<unknown, unknown>);
  }
}

/** The definition (path and codecs) of a method of either service. */
export function method(name: string): grpc.MethodDefinition<unknown, unknown> {
  const def = byName.get(name);
  if (!def) throw new Error(`unknown method ${name}`);
  return def;
}

export type { JobState__Output as WireJobState } from "./gen/taskraft/v1/JobState.js";
export type { ClusterStatus__Output as ClusterStatus } from "./gen/taskraft/v1/ClusterStatus.js";
export type { QueueStats__Output as QueueStats } from "./gen/taskraft/v1/QueueStats.js";
export type { Worker__Output as WorkerInfo } from "./gen/taskraft/v1/Worker.js";
export type { Job__Output as WireJob } from "./gen/taskraft/v1/Job.js";
export type { LeasedJob__Output as LeasedJob } from "./gen/taskraft/v1/LeasedJob.js";
export type { EnqueueRequest } from "./gen/taskraft/v1/EnqueueRequest.js";
export type { WorkRequest } from "./gen/taskraft/v1/WorkRequest.js";
export type { WorkResponse__Output as WorkResponse } from "./gen/taskraft/v1/WorkResponse.js";
export type { WorkOpened__Output as WorkOpened } from "./gen/taskraft/v1/WorkOpened.js";
export type { WorkAnswer__Output as WorkAnswer } from "./gen/taskraft/v1/WorkAnswer.js";
