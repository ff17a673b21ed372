"""The web chat page served at `/` with `--ui`: one self-contained HTML file (inline CSS and JS, no CDN).

It talks to the same `POST /v1/chat/completions` with `stream: true`: upload
an image (it belongs to the first question of a conversation; a new image
starts a new conversation), ask, read the answer as it streams, go on with
follow-up questions, change temperature / top_p / max tokens, clear. Examples
(image + question, with the expected answer) are shown when the server passes
some, e.g. for the demo model.
"""

from __future__ import annotations

import html
import json

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#283447;color:#fff;padding:10px 18px;font-size:18px}
header small{opacity:.7;margin-left:8px}
main{display:flex;gap:16px;padding:16px;align-items:flex-start}
#side{width:300px;flex:none;display:flex;flex-direction:column;gap:12px}
.card{background:#fff;border-radius:8px;padding:12px;box-shadow:0 1px 3px #0002}
#preview{width:100%;min-height:120px;border:2px dashed #b8c0cc;border-radius:6px;display:flex;
 align-items:center;justify-content:center;color:#7a8494;overflow:hidden}
#preview img{width:100%;image-rendering:pixelated}
label{display:flex;justify-content:space-between;align-items:center;margin:6px 0;font-size:14px}
label input[type=number]{width:80px}
#chat{flex:1;display:flex;flex-direction:column;gap:10px;min-width:0}
#log{min-height:300px;max-height:65vh;overflow-y:auto;display:flex;flex-direction:column;gap:8px}
.msg{padding:8px 12px;border-radius:8px;white-space:pre-wrap;max-width:85%}
.user{background:#dbe7ff;align-self:flex-end}
.assistant{background:#eef0f3;align-self:flex-start}
.error{background:#ffe1e1;align-self:stretch}
.note{color:#7a8494;font-size:13px;align-self:center}
#ask{display:flex;gap:8px}
#question{flex:1;min-height:44px;font:inherit;padding:6px}
button{font:inherit;padding:6px 14px;border-radius:6px;border:1px solid #8a94a6;background:#fff;cursor:pointer}
button.primary{background:#2f6fec;color:#fff;border-color:#2f6fec}
button:disabled{opacity:.5;cursor:default}
#examples{display:flex;flex-direction:column;gap:6px}
.example{display:flex;gap:8px;align-items:center;text-align:left}
.example img{width:40px;height:40px;image-rendering:pixelated;flex:none}
.example small{color:#7a8494}
"""

_SCRIPT = r"""
const cfg = JSON.parse(document.getElementById('config').textContent);
const $ = (id) => document.getElementById(id);
let messages = [], image = null, busy = false, controller = null;

function setBusy(b) {
  busy = b; document.body.dataset.state = b ? 'busy' : 'idle';
  $('send').disabled = b; $('stop').disabled = !b;
}
function add(cls, text) {
  const d = document.createElement('div'); d.className = 'msg ' + cls; d.textContent = text;
  $('log').appendChild(d); $('log').scrollTop = $('log').scrollHeight; return d;
}
function note(text) { const d = add('note', text); d.className = 'note'; }
function showImage(url) {
  image = url; $('preview').innerHTML = '';
  if (url) {
    const i = document.createElement('img'); i.src = url; i.alt = 'uploaded image'; $('preview').appendChild(i);
  } else { $('preview').textContent = 'no image'; }
}
function clearAll() {
  if (controller) controller.abort();
  messages = []; $('log').innerHTML = ''; showImage(null); $('file').value = ''; $('question').value = '';
}
function newImage(url) {
  if (messages.length) { messages = []; $('log').innerHTML = ''; note('new image: new conversation'); }
  showImage(url);
}
$('file').addEventListener('change', () => {
  const f = $('file').files[0]; if (!f) return;
  const r = new FileReader(); r.onload = () => newImage(r.result); r.readAsDataURL(f);
});
$('clear').addEventListener('click', clearAll);
$('stop').addEventListener('click', () => { if (controller) controller.abort(); });
$('question').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); send(); }
});
$('send').addEventListener('click', send);

async function send() {
  const text = $('question').value.trim();
  if (busy || !text) return;
  $('question').value = '';
  const first = messages.length === 0;
  const content = [{type: 'text', text}];
  if (first && image) content.push({type: 'image_url', image_url: {url: image}});
  const pending = messages.concat([{role: 'user', content}]);
  add('user', text);
  const out = add('assistant', '');
  const headers = {'Content-Type': 'application/json'};
  if ($('key').value) headers['Authorization'] = 'Bearer ' + $('key').value;
  const body = {model: cfg.model, messages: pending, stream: true,
    temperature: parseFloat($('temperature').value), top_p: parseFloat($('top_p').value),
    max_tokens: parseInt($('max_tokens').value, 10)};
  controller = new AbortController(); setBusy(true);
  let answer = '';
  try {
    const r = await fetch('v1/chat/completions', {method: 'POST', headers, body: JSON.stringify(body),
                                                  signal: controller.signal});
    if (!r.ok) {
      let msg = r.status + ' ' + r.statusText;
      try { msg = (await r.json()).error.message; } catch (e) {}
      if (r.status === 401) $('keybox').hidden = false;
      throw new Error(msg);
    }
    const reader = r.body.getReader(), decoder = new TextDecoder();
    let buffer = '', finished = false;
    while (!finished) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        if (!event.startsWith('data: ')) continue;
        const data = event.slice(6);
        if (data === '[DONE]') { finished = true; break; }
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = chunk.choices.length ? chunk.choices[0].delta.content : '';
        if (delta) { answer += delta; out.textContent = answer; $('log').scrollTop = $('log').scrollHeight; }
      }
    }
    messages = pending.concat([{role: 'assistant', content: answer}]);
    out.dataset.done = '1';
  } catch (e) {
    out.remove();
    if (e.name === 'AbortError') { note('stopped'); }
    else { add('error', 'error: ' + e.message); $('log').lastChild.dataset.done = '1'; }
    if (answer) messages = pending.concat([{role: 'assistant', content: answer}]);
  } finally { controller = null; setBusy(false); }
}

for (const ex of cfg.examples) {
  const b = document.createElement('button'); b.className = 'example';
  const i = document.createElement('img'); i.src = ex.image; i.alt = 'example image';
  const t = document.createElement('span'); t.textContent = ex.question.split('\n')[0];
  if (ex.answer) {
    const s = document.createElement('small'); s.textContent = ' (truth: ' + ex.answer + ')'; t.appendChild(s);
  }
  b.appendChild(i); b.appendChild(t);
  b.addEventListener('click', () => { clearAll(); showImage(ex.image); $('question').value = ex.question; });
  $('examples').appendChild(b);
}
$('examplebox').hidden = cfg.examples.length === 0;
$('temperature').value = cfg.temperature; $('top_p').value = cfg.top_p; $('max_tokens').value = cfg.max_tokens;
// A server that wants a key says so on any route: show the key field then.
fetch('v1/models').then((r) => { if (r.status === 401) $('keybox').hidden = false; }).catch(() => {});
setBusy(false);
"""


def render_page(
    model_name: str,
    examples: list[dict] | None = None,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_tokens: int = 128,
    max_tokens_limit: int = 512,
) -> str:
    """The page's HTML.

    Args:
      model_name: shown in the header and sent as `model`.
      examples: `{"image": data URL, "question": str, "answer": str or None}` items.
      temperature, top_p, max_tokens: the settings' starting values; max_tokens_limit: the field's maximum.
    """
    config = {
        "model": model_name,
        "examples": list(examples or []),
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": max_tokens,
    }
    # `</` cannot end the script element from inside a JSON string.
    config_json = json.dumps(config).replace("</", "<\\/")
    name = html.escape(model_name)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>llava_jax: {name}</title><style>{_STYLE}</style></head>
<body data-state="loading">
<header>llava_jax chat<small>{name}</small></header>
<main>
<section id="side">
 <div class="card"><div id="preview">no image</div>
  <p><input type="file" id="file" accept="image/png,image/jpeg"></p></div>
 <div class="card"><b>Settings</b>
  <label>temperature <input type="number" id="temperature" min="0" max="2" step="0.1"></label>
  <label>top_p <input type="number" id="top_p" min="0.05" max="1" step="0.05"></label>
  <label>max tokens <input type="number" id="max_tokens" min="1" max="{int(max_tokens_limit)}" step="1"></label>
  <label id="keybox" hidden>API key <input type="password" id="key" autocomplete="off"></label></div>
 <div class="card" id="examplebox"><b>Examples</b><div id="examples"></div></div>
</section>
<section id="chat" class="card">
 <div id="log"></div>
 <div id="ask"><textarea id="question" placeholder="Ask about the image (Enter sends)"></textarea>
  <button id="send" class="primary">Send</button><button id="stop">Stop</button><button id="clear">Clear</button></div>
</section>
</main>
<script type="application/json" id="config">{config_json}</script>
<script>{_SCRIPT}</script>
</body></html>
"""
