"""The report page's inline CSS and JavaScript (no CDN: the page opens from disk)."""
from __future__ import annotations

CSS = """
:root{--bg:#f5f6f8;--card:#fff;--ink:#1d2330;--mute:#6b7385;--line:#e2e5eb;--accent:#3f6ee8;
--good:#1f9d6b;--suspect:#d98a00;--bad:#d63b3b}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:var(--bg);color:var(--ink)}
header.top{position:sticky;top:0;z-index:20;background:#1d2330;color:#fff;padding:10px 24px;display:flex;
align-items:center;gap:24px;flex-wrap:wrap;box-shadow:0 2px 6px rgba(0,0,0,.2)}
header.top h1{font-size:18px;margin:0;font-weight:650}
header.top .sub{color:#aeb6c7;font-size:12px}
header.top nav{margin-left:auto;display:flex;gap:4px;flex-wrap:wrap}
header.top nav a{color:#dfe5f2;text-decoration:none;padding:4px 10px;border-radius:6px;font-size:13px}
header.top nav a:hover{background:#33405a}
main{max-width:1480px;margin:0 auto;padding:16px 24px 60px}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 20px;margin:16px 0;
scroll-margin-top:70px}
h2{font-size:17px;margin:0 0 12px}
h3{font-size:14px;margin:14px 0 6px;color:var(--mute);font-weight:600}
.banner{background:#fff0f0;border:2px solid var(--bad);color:#8a1010;border-radius:10px;padding:12px 18px;
margin:16px 0;font-size:15px}
.banner b{font-size:16px}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
.fact{background:var(--bg);border-radius:8px;padding:8px 12px}
.fact .v{font-size:20px;font-weight:650}
.fact .k{color:var(--mute);font-size:12px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--mute);font-weight:600;background:#fafbfc}
td.n{text-align:right;font-variant-numeric:tabular-nums}
td.over{color:var(--bad)}
tr.random td{background:#fff3f3}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
pre{background:#f7f8fa;border:1px solid var(--line);border-radius:6px;padding:10px;max-height:420px;
overflow:auto;font-size:12px}
details summary{cursor:pointer;color:var(--accent);margin:8px 0}
.badge{display:inline-block;padding:1px 7px;border-radius:10px;font-size:11px;font-weight:600;color:#fff;
background:#8a93a6;margin:1px 2px 1px 0;white-space:nowrap}
.b-good{background:var(--good)}.b-suspect{background:var(--suspect)}.b-bad,.b-random{background:var(--bad)}
.b-flag{background:#7b5bd6}.b-error{background:var(--bad)}.b-skipped{background:#8a93a6}
.muted{color:var(--mute)}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(390px,1fr));gap:12px}
.chart{background:#fcfcfd;border:1px solid var(--line);border-radius:8px;width:100%;height:auto}
.chart .ct{font-weight:650;font-size:13px;fill:var(--ink)}
.chart .cm{font-size:10px;fill:var(--mute)}
.chart .cl{font-size:10px;fill:var(--ink)}
.chart .ax{stroke:#9aa3b5;stroke-width:1}
.chart .thr{stroke:var(--bad);stroke-width:1.5;stroke-dasharray:4 3}
.chart .thr-t{fill:var(--bad)}
.worst{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:14px}
.worst img{width:40px;height:40px;border-radius:4px;display:block}
.controls{display:flex;gap:12px;flex-wrap:wrap;align-items:center;margin-bottom:10px;position:sticky;top:52px;
background:var(--card);z-index:10;padding:8px 0;border-bottom:1px solid var(--line)}
.controls label{font-size:12px;color:var(--mute)}
.controls select,.controls input{font:inherit;padding:4px 8px;border:1px solid var(--line);border-radius:6px;
background:#fff}
.legends{display:flex;gap:22px;flex-wrap:wrap;margin:6px 0 12px;font-size:12px}
.legend span.sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin:0 3px 0 8px;vertical-align:-1px}
.cards{display:flex;flex-direction:column;gap:10px}
.card{display:flex;gap:14px;border:1px solid var(--line);border-radius:10px;padding:10px;background:#fff}
.card.q-bad{border-left:5px solid var(--bad)}.card.q-suspect{border-left:5px solid var(--suspect)}
.card.q-good{border-left:5px solid var(--good)}
.strip{display:flex;gap:6px;flex-wrap:wrap}
.strip figure{margin:0;text-align:center}
.strip img{width:136px;height:136px;object-fit:contain;background:#111;border-radius:6px;display:block;
transition:transform .12s;position:relative}
.strip img:hover{transform:scale(1.9);z-index:5;box-shadow:0 6px 24px rgba(0,0,0,.45)}
.strip figcaption{font-size:11px;color:var(--mute)}
.info{min-width:250px;flex:1;font-size:12.5px}
.info .key{font-weight:650;font-size:13.5px}
.info .kv{color:var(--mute)}.info .kv b{color:var(--ink);font-weight:600}
.caption{margin-top:4px;font-style:italic}
.caption .s{font-style:normal;color:var(--mute);font-size:11px}
.fails{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:8px;margin-top:14px}
.fail{border:1px dashed #d4a6a6;background:#fff8f8;border-radius:8px;padding:8px 10px;font-size:12.5px}
.fail .why{color:#8a1010;word-break:break-word}
.hidden{display:none!important}
"""

JS = """
(function(){
  function applyFilters(){
    var id=document.getElementById('f-identity').value, st=document.getElementById('f-status').value,
        fl=document.getElementById('f-flag').value, q=document.getElementById('f-key').value.trim().toLowerCase();
    var shown=0, all=document.querySelectorAll('[data-card]');
    all.forEach(function(el){
      var flags=(el.dataset.flags||'').split(' ').filter(Boolean), ok=true;
      if(id && el.dataset.identity!==id) ok=false;
      if(st && el.dataset.status!==st) ok=false;
      if(fl==='__any' && !flags.some(function(f){return f!=='quality:good';})) ok=false;
      if(fl==='__none' && flags.some(function(f){return f!=='quality:good';})) ok=false;
      if(fl && fl.indexOf('__')!==0 && flags.indexOf(fl)<0) ok=false;
      if(q && el.dataset.key.toLowerCase().indexOf(q)<0) ok=false;
      el.classList.toggle('hidden',!ok); if(ok) shown++;
    });
    document.getElementById('f-count').textContent=shown+' of '+all.length+' shown';
  }
  ['f-identity','f-status','f-flag','f-key'].forEach(function(id){
    var el=document.getElementById(id); if(el){el.addEventListener('input',applyFilters);}
  });
  if(document.getElementById('f-count')) applyFilters();
  window.addEventListener('load',function(){
    var imgs=document.images, broken=0;
    for(var i=0;i<imgs.length;i++){ if(!imgs[i].complete||imgs[i].naturalWidth===0) broken++; }
    document.body.setAttribute('data-images',String(imgs.length));
    document.body.setAttribute('data-broken-images',String(broken));
  });
})();
"""
