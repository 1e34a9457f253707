// Tokenizers: one text under several tokenizers.

let app;

export function init(lab) {
  app = lab;
}

export async function show() {}
