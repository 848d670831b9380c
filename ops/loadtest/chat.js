// Load test for the OpenAI-compatible chat endpoint, after the deployment
// guide's k6 scenario: ramp to 10 virtual users over 1 minute, hold 50 for
// 5 minutes, ramp down over 1 minute; every response is checked for 200 and
// for not being a 429.
//
//   k6 run --no-usage-report ops/loadtest/chat.js          (or: just loadtest)
//
// Settings (k6 -e NAME=value, or the environment):
//   BASE_URL        gateway root, no /v1            default http://127.0.0.1:18080
//   MODEL           model name                      default gemma-3-270m
//   API_KEY         Bearer key ("" sends none)      default ""
//   STREAM          true | false                    default false
//   TIME_SCALE      1 = the guide's 7 minutes; 0.02 = a smoke run of about 8 s
//   MAX_TOKENS      per request                     default 64
//   SLEEP           seconds a user waits between its requests (0: back to back,
//                   as in the guide)                default 0
//   P95_MS          threshold: p95 of a chat request, ms          default 30000
//   TTFT_P95_MS     threshold: p95 time to first token, ms        default 5000
//   MAX_ERROR_RATE  threshold: share of failed requests            default 0.01
//
// Time to first token: k6 reads a response body only once it is complete, so
// it cannot see when the first SSE chunk of a stream arrived, and the gateway
// sends a stream's headers as soon as the job is queued. A second scenario
// therefore asks, once a second, for a one-token completion under the same
// load: its full response time is the wait a user has before the first
// token (queue + prompt + one token + network), measured from the client.
// That is the `ttft` trend; the dashboard's TTFT panel is the server's view.

import http from 'k6/http';
import { check, sleep } from 'k6';
import { Trend } from 'k6/metrics';

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:18080').replace(/\/+$/, '');
const MODEL = __ENV.MODEL || 'gemma-3-270m';
const API_KEY = __ENV.API_KEY || '';
const STREAM = (__ENV.STREAM || 'false').toLowerCase() === 'true';
const TIME_SCALE = Number(__ENV.TIME_SCALE || '1');
const MAX_TOKENS = Number(__ENV.MAX_TOKENS || '64');
const SLEEP = Number(__ENV.SLEEP || '0');
const P95_MS = Number(__ENV.P95_MS || '30000');
const TTFT_P95_MS = Number(__ENV.TTFT_P95_MS || '5000');
const MAX_ERROR_RATE = Number(__ENV.MAX_ERROR_RATE || '0.01');

if (!(TIME_SCALE > 0)) {
  throw new Error(`TIME_SCALE must be a positive number, got ${__ENV.TIME_SCALE}`);
}

// Seconds of the guide's scenario, scaled; whole milliseconds for k6.
function scaled(seconds) {
  return `${Math.max(1, Math.round(seconds * TIME_SCALE * 1000))}ms`;
}

const ttft = new Trend('ttft', true);

export const options = {
  scenarios: {
    chat: {
      executor: 'ramping-vus',
      exec: 'chat',
      startVUs: 0,
      stages: [
        { duration: scaled(60), target: 10 }, // warm-up
        { duration: scaled(300), target: 50 }, // load
        { duration: scaled(60), target: 0 }, // cool-down
      ],
      gracefulRampDown: scaled(30),
    },
    ttft_probe: {
      executor: 'constant-arrival-rate',
      exec: 'probe',
      rate: 1,
      timeUnit: '1s',
      duration: scaled(420),
      preAllocatedVUs: 2,
      maxVUs: 5,
    },
  },
  thresholds: {
    http_req_failed: [`rate<${MAX_ERROR_RATE}`],
    checks: [`rate>${1 - MAX_ERROR_RATE}`],
    'http_req_duration{scenario:chat}': [`p(95)<${P95_MS}`],
    ttft: [`p(95)<${TTFT_P95_MS}`],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)', 'count'],
};

const headers = { 'Content-Type': 'application/json' };
if (API_KEY) {
  headers.Authorization = `Bearer ${API_KEY}`;
}

function post(body, tags) {
  return http.post(`${BASE_URL}/v1/chat/completions`, JSON.stringify(body), {
    headers,
    tags,
    timeout: '660s',
  });
}

function complete(res) {
  if (!STREAM) {
    return res.json('choices.0.message.content') != null;
  }
  const body = String(res.body);
  return body.includes('data: [DONE]') && !/^data: \{"error"/m.test(body);
}

export function chat() {
  const res = post(
    {
      model: MODEL,
      messages: [{ role: 'user', content: 'Hello' }],
      stream: STREAM,
      max_tokens: MAX_TOKENS,
    },
    { stream: String(STREAM) },
  );
  check(res, {
    'status is 200': (r) => r.status === 200,
    'status is not 429': (r) => r.status !== 429,
    // A failure after a stream's 200 arrives as an error frame (the same
    // body a non-streamed error has) before [DONE], so a 200 alone is not
    // an answer.
    'answer is complete': (r) => r.status !== 200 || complete(r),
  });
  if (SLEEP > 0) {
    sleep(SLEEP);
  }
}

export function probe() {
  const res = post({
    model: MODEL,
    messages: [{ role: 'user', content: 'Hello' }],
    stream: false,
    max_tokens: 1,
  });
  if (res.status === 200) {
    ttft.add(res.timings.duration);
  }
  check(res, { 'probe status is 200': (r) => r.status === 200 });
}
