// One run of @ag-ui/client's HttpAgent against the gateway's POST /agui.
//
// Usage: node run.mjs '{"url": ..., "token": ..., "threadId": ..., "runId": ..., "message": ...}'
//
// Each event the agent applies is reported on stderr as it arrives ("event TYPE"), so a caller
// can act mid-run (abort it once RUN_STARTED arrived); at the end one JSON summary goes to
// stdout: the event types in order, the assistant text, RUN_STARTED's and RUN_FINISHED's ids,
// the outcome the client read, the agent's messages, any error, and anything the client
// logged through console.warn / console.error (its verifier and subscriber errors go there).
import { HttpAgent } from "@ag-ui/client";

const config = JSON.parse(process.argv[2]);
const summary = {
  types: [],
  text: "",
  runStarted: null,
  runFinished: null,
  outcome: null,
  messages: null,
  error: null,
  logged: [],
};

const log = (...args) =>
  summary.logged.push(args.map((a) => (a instanceof Error ? a.message : String(a))).join(" "));
console.warn = log;
console.error = log;

const agent = new HttpAgent({
  url: config.url,
  headers: { Authorization: `Bearer ${config.token}` },
  threadId: config.threadId,
  initialMessages: [{ id: `${config.runId}-user`, role: "user", content: config.message }],
});

const subscriber = {
  onEvent({ event }) {
    summary.types.push(event.type);
    process.stderr.write(`event ${event.type}\n`);
  },
  onTextMessageContentEvent({ event }) {
    summary.text += event.delta;
  },
  onRunStartedEvent({ event }) {
    summary.runStarted = { threadId: event.threadId, runId: event.runId };
  },
  onRunFinishedEvent({ event, outcome }) {
    summary.runFinished = { threadId: event.threadId, runId: event.runId };
    summary.outcome = outcome;
  },
  onRunFailed({ error }) {
    summary.error = error instanceof Error ? error.message : String(error);
  },
};

try {
  await agent.runAgent({ runId: config.runId }, subscriber);
} catch (error) {
  summary.error ??= error instanceof Error ? error.message : String(error);
}
summary.messages = agent.messages;
process.stdout.write(`${JSON.stringify(summary)}\n`);
