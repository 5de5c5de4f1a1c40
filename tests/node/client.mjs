// The npm `openai` client against gptrelay's OpenAI-compatible API; run by tests/test_node_client.py.
//
// Usage: node client.mjs BASE_URL [API_KEY] [PROMPT] [MODEL]
// (BASE_URL and API_KEY fall back to OPENAI_BASE_URL and OPENAI_API_KEY.)
//
// Prints one JSON line: {prompt, text, streamed_text, chunks, usage} on success (exit 0), or
// {error: {status, name, message}} when the API answers with an error (exit 3).
import OpenAI from "openai";

const API_ERROR_EXIT = 3;
const TIMEOUT_MS = 10_000;

const [baseURL = process.env.OPENAI_BASE_URL, apiKey = process.env.OPENAI_API_KEY ?? "sk-none"] =
  process.argv.slice(2, 4);
const prompt = process.argv[4] ?? "Hello from Node!";
const model = process.argv[5] ?? "gpt-4o-mini";

if (!baseURL) {
  console.error("usage: node client.mjs BASE_URL [API_KEY] [PROMPT] [MODEL]");
  process.exit(2);
}

const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: TIMEOUT_MS });
const messages = [{ role: "user", content: prompt }];

try {
  const completion = await client.chat.completions.create({ model, messages });
  const stream = await client.chat.completions.create({
    model,
    messages,
    stream: true,
    stream_options: { include_usage: true },
  });
  let streamedText = "";
  let chunks = 0;
  let usage = null;
  for await (const chunk of stream) {
    chunks += 1;
    streamedText += chunk.choices[0]?.delta?.content ?? "";
    if (chunk.usage) {
      usage = chunk.usage;
    }
  }
  const result = {
    prompt,
    text: completion.choices[0].message.content,
    streamed_text: streamedText,
    chunks,
    usage,
  };
  console.log(JSON.stringify(result));
} catch (err) {
  if (!(err instanceof OpenAI.APIError)) {
    throw err;
  }
  console.log(JSON.stringify({ error: { status: err.status ?? null, name: err.constructor.name, message: err.message } }));
  process.exit(API_ERROR_EXIT);
}
