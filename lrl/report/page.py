"""The fixed parts of the report page: its Content-Security-Policy (nothing may be fetched: styles and the
script are inline, images and audio are data URIs or, with --audio link, files beside the page), the
stylesheet and the script that sorts and filters the utterance table.

The script reads its state from the URL fragment (or query string) on load and writes it back on each
change, so a view can be linked to and a headless browser can be told what to show:
``report.html#sort=wl0&desc=1&filter=fixed0&q=word``. Sort keys are the rows' data- attributes (id, dur,
spk, sus, and per run k: wgK / wlK the greedy / LM WER, gainK greedy minus LM WER); filters are the rows'
flags (errK: an error in run k's final hypothesis, fixedK / brokeK: the LM removed / added errors,
suspect: flagged by check-labels, differ: the runs' final hypotheses differ).
"""

from __future__ import annotations


def csp(link_audio: bool) -> str:
    media = "data: 'self' file:" if link_audio else "data:"
    return (f"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
            f"media-src {media}; form-action 'none'; base-uri 'none'")


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;margin:0 auto;max-width:1400px;padding:0 16px 48px;color:#222}
h1{font-size:22px;margin:18px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}.muted{color:#777}
table{border-collapse:collapse}td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
table.summary td.num,table.words td.num{text-align:right;font-variant-numeric:tabular-nums}
dl.prov{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:6px 0 12px;font-size:13px}
dl.prov dt{color:#666}dl.prov dd{margin:0;word-break:break-all}
.figs{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}.figs figure{margin:0}
.figs img{max-width:600px;border:1px solid #eee}figcaption{font-size:12px;color:#666}
svg.chart{font-size:11px;background:#fff}svg .ct{font-size:12px;font-weight:600}svg .ax{fill:#555}svg .grid{stroke:#e4e4e4}
table.conf td,table.conf th{text-align:center;min-width:22px;border:1px solid #eee;font-family:ui-monospace,monospace}
.s{background:#fde2b0;border-bottom:2px solid #e69f00}.d{background:#f6c6c6;text-decoration:line-through;color:#8a1c1c}
.i{background:#cfe8cf;border-bottom:2px solid #2e7d32}.hyp,.ref{font-family:ui-monospace,"Noto Sans Mono",monospace;font-size:13px}
.lab{display:inline-block;min-width:54px;color:#777;font-size:11px}.w{font-size:11px;color:#555;margin-left:6px}
#controls{position:sticky;top:0;background:#fafafa;padding:8px;border:1px solid #e5e5e5;display:flex;gap:10px;flex-wrap:wrap;align-items:center;z-index:2}
#utts tr[hidden]{display:none}#utts td.meta{font-size:12px;color:#555;white-space:nowrap}audio{height:28px;width:210px}
.badge{font-size:11px;padding:1px 5px;border-radius:8px;background:#eee}.b-fixed{background:#cfe8cf}.b-broke{background:#f6c6c6}
.b-sus{background:#ffe08a}.legend span{margin-right:10px}
"""

JS = r"""
(function(){
  var tb=document.getElementById('rows'); if(!tb) return;
  var rows=Array.prototype.slice.call(tb.rows);
  rows.forEach(function(r,i){r._i=i;});
  var sortSel=document.getElementById('sort'), desc=document.getElementById('desc'),
      filt=document.getElementById('filter'), q=document.getElementById('q'), shown=document.getElementById('shown');
  function val(r,k,num){var v=r.getAttribute('data-'+k); if(v===null||v==='') return null;
    return num?parseFloat(v):v.toLowerCase();}
  function cmp(a,b,k,d,num){var x=val(a,k,num),y=val(b,k,num);
    if(x===null&&y===null) return a._i-b._i; if(x===null) return 1; if(y===null) return -1;
    var c=(x<y?-1:x>y?1:0); return c===0?a._i-b._i:(d?-c:c);}
  function apply(save){
    var k=sortSel.value,num=sortSel.selectedOptions[0].hasAttribute('data-num'),d=desc.checked,f=filt.value,t=q.value.trim().toLowerCase(),n=0;
    var s=rows.slice().sort(function(a,b){return cmp(a,b,k,d,num);});
    s.forEach(function(r){var fl=' '+(r.getAttribute('data-flags')||'')+' ';
      var ok=(!f||fl.indexOf(' '+f+' ')>=0)&&(!t||r.textContent.toLowerCase().indexOf(t)>=0);
      r.hidden=!ok; if(ok) n++; tb.appendChild(r);});
    shown.textContent=n; document.body.setAttribute('data-view',k+(d?' desc':' asc')+' '+(f||'all'));
    if(save){var p=new URLSearchParams(); p.set('sort',k); if(d) p.set('desc','1'); if(f) p.set('filter',f);
      if(t) p.set('q',t); try{history.replaceState(null,'','#'+p.toString());}catch(e){}}
  }
  var h=location.hash.length>1?location.hash.slice(1):location.search.slice(1), p=new URLSearchParams(h);
  function has(sel,v){return Array.prototype.some.call(sel.options,function(o){return o.value===v;});}
  if(p.get('sort')&&has(sortSel,p.get('sort'))) sortSel.value=p.get('sort');
  if(p.has('sort')||p.has('desc')) desc.checked=p.get('desc')==='1';  // a linked view says its direction
  if(p.get('filter')!==null&&has(filt,p.get('filter'))) filt.value=p.get('filter');
  if(p.get('q')) q.value=p.get('q');
  [sortSel,desc,filt].forEach(function(e){e.addEventListener('change',function(){apply(true);});});
  q.addEventListener('input',function(){apply(true);});
  apply(false);
})();
"""
