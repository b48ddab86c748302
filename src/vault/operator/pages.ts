/** The operator endpoint's few HTML pages (no scripts, no external resources). */
const esc = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title: string, body: string): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width"><title>${esc(title)}</title>
<style>body{font-family:system-ui,sans-serif;max-width:36em;margin:3em auto;padding:0 1em}code{font-size:1.6em;letter-spacing:.1em}</style></head>
<body><h1>${esc(title)}</h1>${body}</body></html>`;
}

export function choosePage(code: string, links: Array<{ name: string; href: string }>): string {
  return page(
    'kura: sign in',
    `<p>Check that your terminal shows the code <code id="code">${esc(code)}</code>, then sign in with:</p><ul>${links
      .map((l) => `<li><a id="provider-${esc(l.name)}" href="${esc(l.href)}">${esc(l.name)}</a></li>`)
      .join('')}</ul>`,
  );
}

export function signedInPage(who: string, roles: string): string {
  return page('kura: signed in', `<p id="result">Signed in as ${esc(who)} (${esc(roles)}). Return to your terminal.</p>`);
}

export function refusedPage(code: string, reason: string): string {
  return page('kura: sign-in refused', `<p id="result">${esc(code)}: ${esc(reason)}</p><p>Return to your terminal and run <b>kura login</b> again.</p>`);
}

export function notFoundPage(): string {
  return page('kura: no such sign-in', '<p id="result">This sign-in is unknown, finished or expired: run <b>kura login</b> again.</p>');
}
