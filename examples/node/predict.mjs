#!/usr/bin/env node
// Send image files to the prediction server with the official socket.io-client
// and print one JSON line per file (the `label` or `error` object).
//
//   node predict.mjs --server http://127.0.0.1:5000 --model shapes [--token T] FILE...
//
// Files go as binary attachments; the ack form (`emitWithAck`) returns the
// answer directly. Exit code 1 if any file got an error.
import { readFile } from "node:fs/promises";
import { io } from "socket.io-client";

function parseArgs(argv) {
  const options = { server: "http://127.0.0.1:5000", model: "shapes", token: undefined, files: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--server" || arg === "--model" || arg === "--token") options[arg.slice(2)] = argv[++i];
    else options.files.push(arg);
  }
  return options;
}

const options = parseArgs(process.argv.slice(2));
if (options.files.length === 0) {
  console.error("usage: predict.mjs --server URL --model NAME [--token T] FILE...");
  process.exit(2);
}

const socket = io(options.server, {
  transports: ["websocket"],
  reconnection: false,
  auth: options.token ? { token: options.token } : undefined,
});
socket.on("connect_error", (err) => {
  console.error(`cannot connect to ${options.server}: ${err.message}`);
  process.exit(2);
});

let failed = false;
socket.on("connect", async () => {
  for (const [index, file] of options.files.entries()) {
    const image = await readFile(file);
    const answer = await socket.timeout(60_000).emitWithAck("frame", { model: options.model, image, id: index });
    if (answer.code) failed = true;
    console.log(JSON.stringify({ file, ...answer }));
  }
  socket.close();
  process.exit(failed ? 1 : 0);
});
