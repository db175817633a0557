// Build step: copies the public proto from the repository into this package (so the
// published package carries it) and generates TypeScript types for its messages and
// services into src/gen/ with proto-loader-gen-types. Neither output is committed.
//
// The loader options in src/proto.ts must match the flags below.
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = join(dirname(fileURLToPath(import.meta.url)), "..");
const rel = join("taskraft", "v1", "taskraft.proto");
const repoProto = join(pkg, "..", "..", "proto", rel);
const ownProto = join(pkg, "proto", rel);

if (existsSync(repoProto)) {
  mkdirSync(dirname(ownProto), { recursive: true });
  copyFileSync(repoProto, ownProto);
} else if (!existsSync(ownProto)) {
  throw new Error(`no proto file: neither ${repoProto} nor ${ownProto} exists`);
}

const require = createRequire(import.meta.url);
const genTypes = join(
  dirname(require.resolve("@grpc/proto-loader/package.json")),
  "build",
  "bin",
  "proto-loader-gen-types.js",
);
const out = join(pkg, "src", "gen");
rmSync(out, { recursive: true, force: true });
execFileSync(
  process.execPath,
  [
    genTypes,
    "--grpcLib=@grpc/grpc-js",
    "--longs=Number",
    "--enums=String",
    "--defaults",
    "--oneofs",
    "--importFileExtension=.js",
    "-I",
    join(pkg, "proto"),
    "-O",
    out,
    rel,
  ],
  { stdio: "inherit" },
);
