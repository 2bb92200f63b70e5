// Starts Swagger UI on /schema/swagger. A file rather than an inline script, so that the page's
// Content-Security-Policy can refuse every inline script; the document is fetched from the URL the page names.
"use strict";

(() => {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    domNode: root,
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    // No badge that would send the document to an online validator.
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
})();
