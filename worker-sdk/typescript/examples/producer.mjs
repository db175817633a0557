// @ts-check
// A producer: `node examples/producer.mjs [addr,addr,...]` (after `npm run build`).
import { Client } from "../dist/index.js";

const client = new Client(process.argv[2] ?? "127.0.0.1:7070", { token: process.env["TASKRAFT_TOKEN"] });
const { jobId } = await client.enqueueJson("emails", { to: "ada@example.com" }, {
  jobType: "send",
  priority: 5,
  idempotencyKey: "welcome-ada", // run again within the dedup window: still stored once
});
const batch = await client.enqueueBatch(
  ["grace", "edsger", "barbara"].map((name) => ({
    queue: "emails",
    payload: JSON.stringify({ to: `${name}@example.com` }),
    jobType: "send",
  })),
);
console.log("enqueued", jobId, "and", batch.length, "more");
const job = await client.waitForJob(jobId, 60_000);
console.log(job.state, job.result.toString());
console.log(await client.queueStats("emails"));
client.close();
