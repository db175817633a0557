// @ts-check
// A worker: `node examples/worker.mjs [addr]` (after `npm run build`). Ctrl-C or SIGTERM
// finishes the jobs in hand, gives the rest back and exits.
import { Client, PermanentError, Worker } from "../dist/index.js";

const client = new Client(process.argv[2] ?? "127.0.0.1:7070");
const worker = new Worker(client, { queues: ["emails"], concurrency: 8 })
  .handle("send", async (job) => {
    const mail = /** @type {{ to?: string }} */ (job.json());
    if (!mail.to) throw new PermanentError("no recipient"); // dead-lettered at once
    job.progress(50, `sending to ${mail.to}`);
    await new Promise((resolve) => setTimeout(resolve, 200)); // the work; honour job.signal in real code
    return { sent: mail.to, attempt: job.attempt }; // stored as the job's result (JSON)
  })
  .handleOther((job) => {
    throw new PermanentError(`no handler for job type ${JSON.stringify(job.jobType)}`);
  });
console.log(await worker.run());
client.close();
