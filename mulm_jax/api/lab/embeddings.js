// Embeddings: the embedding space.

let app;

export function init(lab) {
  app = lab;
}

export async function show() {}
