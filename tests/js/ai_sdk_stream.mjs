// Streams one reply with the Vercel AI SDK and prints {text, usage} as JSON.
//   node ai_sdk_stream.mjs openai|anthropic BASE_URL '{"header": "value"}'
import { createAnthropic } from "@ai-sdk/anthropic";
import { createOpenAI } from "@ai-sdk/openai";
import { streamText } from "ai";

const [provider, baseURL, headersJson] = process.argv.slice(2);
const headers = JSON.parse(headersJson || "{}");
const model = provider === "openai"
  ? createOpenAI({ baseURL, apiKey: "sk-test-key", headers }).chat("gpt-4o")
  : createAnthropic({ baseURL, apiKey: "sk-ant-test-key", headers })("claude-sonnet-4-20250514");
const result = streamText({ model, prompt: "hi", maxRetries: 0 });
let text = "";
for await (const piece of result.textStream) text += piece;
const usage = await result.usage;
console.log(JSON.stringify({ text, inputTokens: usage.inputTokens, outputTokens: usage.outputTokens }));
