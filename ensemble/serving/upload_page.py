"""The upload page of ``effens serve`` (``GET /``): self-contained HTML, CSS and JS, no CDN.

Choose or drop photos; each is sent to ``/v1/predict`` and shown with its class, a
confidence bar per class, the members' votes, the prediction set and the review flag.
Every server-provided string is inserted as text (``textContent``), never as HTML.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>effens</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#222}
main{max-width:960px;margin:0 auto;padding:16px}
#drop{border:2px dashed #89a;border-radius:10px;padding:28px;text-align:center;background:#fff}
#drop.over{background:#eef4ff}
#key{width:220px}
.card{display:flex;gap:14px;background:#fff;border-radius:10px;padding:12px;margin:12px 0;
box-shadow:0 1px 3px rgba(0,0,0,.12)}
.card img{width:180px;height:135px;object-fit:cover;border-radius:6px}
.pred{font-size:20px;font-weight:600}
.review{color:#b35c00;font-weight:600}
.bar{background:#e5e8ee;border-radius:4px;height:14px;width:260px;display:inline-block;vertical-align:middle}
.bar span{display:block;height:14px;border-radius:4px;background:#4a7bd0}
.row{margin:2px 0}.lab{display:inline-block;width:110px}
.err{color:#b00020}.muted{color:#667}
</style></head>
<body><main>
<h1>effens</h1>
<p class="muted" id="model">loading the model description...</p>
<div id="drop"><p>Drop photos here, or <input type="file" id="pick" accept="image/*" multiple></p>
<p class="muted">API key (only if the server asks for one): <input id="key" type="password" autocomplete="off"></p></div>
<div id="status" class="muted"></div>
<div id="results"></div>
</main>
<script>
(function(){
'use strict';
const $ = (id) => document.getElementById(id);
function el(tag, cls, text){ const e = document.createElement(tag); if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text; return e; }
function headers(){ const k = $('key').value.trim(); return k ? {'X-API-Key': k} : {}; }
let maxFiles = 16;
function describe(){
  fetch('v1/model', {headers: headers()}).then(r => r.json()).then(m => {
    if (m.max_files) maxFiles = m.max_files;
    $('model').textContent = m.error ? m.error : 'Classes: ' + m.classes.join(', ') + ' · members: ' +
      m.members.join(', ') + ' · strategy: ' + m.strategy + ' · runtime: ' + m.runtime;
  }).catch(() => { $('model').textContent = 'the model description could not be read'; });
}
describe();
$('key').addEventListener('change', describe);
function show(file, r){
  const card = el('div', 'card');
  const img = el('img'); img.alt = file.name; img.src = URL.createObjectURL(file); card.appendChild(img);
  const box = el('div'); card.appendChild(box);
  box.appendChild(el('div', 'muted', r.file));
  if (r.error){ box.appendChild(el('div', 'err', r.error)); $('results').prepend(card); return; }
  box.appendChild(el('div', 'pred', r.prediction));
  if (r.decision !== undefined) box.appendChild(el('div', r.decision === 'review' ? 'review' : 'muted',
    r.decision === 'review' ? 'send to review' : 'decision: ' + r.decision));
  if (r.prediction_set !== undefined) box.appendChild(el('div', 'muted', 'prediction set: ' + r.prediction_set.split('|').join(', ')));
  for (const [c, p] of Object.entries(r.proba)){
    const row = el('div', 'row'); row.appendChild(el('span', 'lab', c));
    const bar = el('span', 'bar'); const fill = el('span'); fill.style.width = (100 * p).toFixed(1) + '%';
    bar.appendChild(fill); row.appendChild(bar); row.appendChild(el('span', 'muted', ' ' + (100 * p).toFixed(1) + '%'));
    box.appendChild(row);
  }
  box.appendChild(el('div', 'muted', 'votes: ' + Object.entries(r.votes).filter(([, v]) => v)
    .map(([n, v]) => n + ' ' + v).join(' · ')));
  $('results').prepend(card);
}
async function send(files){
  files = Array.from(files);
  if (!files.length) return;
  if (files.length > maxFiles) {
    $('status').textContent = 'sending the first ' + maxFiles + ' of ' + files.length + ' photos (the server takes ' +
      maxFiles + ' per request)';
    files = files.slice(0, maxFiles);
  }
  const form = new FormData(); files.forEach(f => form.append('files', f, f.name));
  $('status').textContent = 'predicting ' + files.length + ' photo(s)...';
  try {
    const resp = await fetch('v1/predict', {method: 'POST', body: form, headers: headers()});
    const body = await resp.json();
    (body.results || []).forEach((r, i) => show(files[i], r));
    $('status').textContent = body.error ? body.error : 'done (' + body.strategy + ')';
  } catch (e) { $('status').textContent = 'the request failed: ' + e; }
  document.body.setAttribute('data-answered', String((+document.body.getAttribute('data-answered') || 0) + 1));
}
$('pick').addEventListener('change', (e) => send(e.target.files));
const drop = $('drop');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over'); send(e.dataTransfer.files); });
// `#selftest=<data:image/... URL>`: upload that photo through the page, as a user's choice would be
// (only a photo inside the link itself: the page never fetches another address for it)
const selftest = location.hash.startsWith('#selftest=') ? decodeURIComponent(location.hash.slice(10)) : '';
if (selftest.startsWith('data:image/')) {
  fetch(selftest).then(r => r.blob()).then(b => send([new File([b], 'selftest.png', {type: b.type})]));
}
})();
</script>
</body></html>
"""
