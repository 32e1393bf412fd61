// Loads protos/paraserve.proto at run time for both sides of the gRPC contract (gateway
// client, worker server, worker peers). Types come from protos/generated, which the build
// writes from the same file, so the .proto stays the single source of truth.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { ProtoGrpcType } from './generated/paraserve.js';

/** The .proto sits beside this file in the source tree and two levels up from dist/protos. */
function protoPath(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [path.join(here, 'paraserve.proto'), path.join(here, '..', '..', 'protos', 'paraserve.proto')];
  return candidates.find((p) => existsSync(p)) ?? candidates[0]!;
}



let cached: ProtoGrpcType | null = null;

/** Options match the generator flags in package.json (longs as numbers, enums as strings). */
export function loadParaserveProto(): ProtoGrpcType {
  if (cached) return cached;
  const definition = protoLoader.loadSync(protoPath(), {
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  cached = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
  return cached;
}

export type { ProtoGrpcType };
