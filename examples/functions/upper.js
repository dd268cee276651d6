// Node.js function: returns the text in upper case as a reply event.
exports.handle = async (event) => {
  const text = typeof event.data === 'string' ? event.data : JSON.stringify(event.data);
  console.log(`upper ${event.id}: ${text}`);
  return { specversion: '1.0', type: 'text.upper', data: { text: text.toUpperCase() } };
};
