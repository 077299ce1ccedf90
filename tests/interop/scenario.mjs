// Drives a live pod server with @inrupt/solid-client, the library most Solid apps use, one step per
// command from tests/test_interop_solid_client.py (the line protocol and the login: driver.mjs).
// Between steps the test looks at the server over plain HTTP, so what the library did is checked on
// the server, not only through the library's own reading of it.
//
// Every request goes through the logged-in session's fetch, so it carries a DPoP-bound access token
// and a fresh DPoP proof, as an app's requests do. "requests" lists what the library sent for the
// step (method, URL, the headers that matter, the body of PATCHes) and how the server answered.

import {
  addStringWithLocale,
  buildThing,
  createAclFromFallbackAcl,
  createContainerAt,
  createContainerInContainer,
  createSolidDataset,
  createThing,
  deleteContainer,
  deleteFile,
  deleteSolidDataset,
  getAgentAccess,
  getAgentDefaultAccess,
  getAgentResourceAccess,
  getContainedResourceUrlAll,
  getContentType,
  getDateAll,
  getEffectiveAccess,
  getPodOwner,
  getPodUrlAll,
  getDatetime,
  getDatetimeAll,
  getFile,
  getFileWithAcl,
  getInteger,
  getPublicResourceAccess,
  getResourceAcl,
  getResourceInfo,
  getResourceInfoWithAcl,
  getSolidDataset,
  getSolidDatasetWithAcl,
  getSourceUrl,
  getStringNoLocale,
  getStringWithLocale,
  getStringByLocaleAll,
  getThing,
  getUrl,
  getUrlAll,
  hasAccessibleAcl,
  hasFallbackAcl,
  hasResourceAcl,
  isContainer,
  isPodOwner,
  isRawData,
  overwriteFile,
  removeAll,
  saveAclFor,
  saveFileInContainer,
  saveSolidDatasetAt,
  saveSolidDatasetInContainer,
  setAgentDefaultAccess,
  setAgentResourceAccess,
  setPublicResourceAccess,
  setDate,
  setDatetime,
  setStringNoLocale,
  setThing,
  universalAccess,
} from "@inrupt/solid-client";
import { authFetch, serve, state } from "./driver.mjs";

const SCHEMA = "http://schema.org/";
const RDF_TYPE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type";
const NONE = { read: false, append: false, write: false, control: false };

/** The values of one thing that the test compares with what it wrote. */
function describeNote(dataset, url) {
  const thing = getThing(dataset, url);
  if (thing === null) return null;
  return {
    types: getUrlAll(thing, RDF_TYPE),
    name: getStringNoLocale(thing, SCHEMA + "name"),
    textFr: getStringWithLocale(thing, SCHEMA + "text", "fr"),
    textEn: getStringWithLocale(thing, SCHEMA + "text", "en"),
    texts: Object.fromEntries(
      [...getStringByLocaleAll(thing, SCHEMA + "text")].map(([locale, all]) => [locale, [...all].sort()]),
    ),
    position: getInteger(thing, SCHEMA + "position"),
    created: getDatetime(thing, SCHEMA + "dateCreated")?.toISOString() ?? null,
    modified: getDatetimeAll(thing, SCHEMA + "dateModified").map((d) => d.toISOString()),
    startDates: getDateAll(thing, SCHEMA + "startDate").map((d) => d.toISOString().slice(0, 10)),
    url: getUrl(thing, SCHEMA + "url"),
    author: getUrl(thing, SCHEMA + "author"),
  };
}

function access(acl) {
  return { read: !!acl.read, append: !!acl.append, write: !!acl.write, control: !!acl.control };
}

const steps = {
  async podOwner({ url }) {
    const info = await getResourceInfo(url, { fetch: authFetch() });
    return { owner: getPodOwner(info), isOwner: isPodOwner(state.session.info.webId, info) };
  },

  // -- 1. resources -------------------------------------------------------------------------------

  async createNote({ container, doc }) {
    const fetch = authFetch();
    const created = await createContainerAt(container, { fetch });
    const note = buildThing(createThing({ name: "note" }))
      .addUrl(RDF_TYPE, SCHEMA + "NoteDigitalDocument")
      .addStringNoLocale(SCHEMA + "name", "First note")
      .addStringWithLocale(SCHEMA + "text", "Bonjour", "fr")
      .addInteger(SCHEMA + "position", 3)
      .addDatetime(SCHEMA + "dateCreated", new Date(Date.UTC(2024, 4, 1, 12, 0, 0)))
      .addDatetime(SCHEMA + "dateModified", new Date(Date.UTC(2024, 4, 1, 12, 0, 0)))
      .addDate(SCHEMA + "startDate", new Date(Date.UTC(2024, 0, 2)))
      .addUrl(SCHEMA + "url", "https://example.org/page")
      .addUrl(SCHEMA + "author", doc + "#author")
      .build();
    const author = buildThing(createThing({ name: "author" }))
      .addStringNoLocale(SCHEMA + "name", "Bob")
      .build();
    let dataset = setThing(setThing(createSolidDataset(), note), author);
    const saved = await saveSolidDatasetAt(doc, dataset, { fetch });
    return {
      containerUrl: getSourceUrl(created),
      containerIsContainer: isContainer(created),
      savedUrl: getSourceUrl(saved),
    };
  },

  async readNote({ doc }) {
    const dataset = await getSolidDataset(doc, { fetch: authFetch() });
    return { sourceUrl: getSourceUrl(dataset), note: describeNote(dataset, doc + "#note") };
  },

  async modifyNote({ doc }) {
    const fetch = authFetch();
    const dataset = await getSolidDataset(doc, { fetch });
    let note = getThing(dataset, doc + "#note");
    note = setStringNoLocale(note, SCHEMA + "name", "Renamed note"); // set: delete old, insert new
    note = removeAll(note, SCHEMA + "url"); // remove
    note = addStringWithLocale(note, SCHEMA + "text", "Hello", "en"); // add
    // Typed values are replaced by deleting the literal exactly as it was read.
    note = setDatetime(note, SCHEMA + "dateModified", new Date(Date.UTC(2024, 5, 1, 8, 30, 0)));
    note = setDate(note, SCHEMA + "startDate", new Date(Date.UTC(2024, 0, 3)));
    const saved = await saveSolidDatasetAt(doc, setThing(dataset, note), { fetch });
    // A second change on the dataset returned by the save: the library tracks it from there.
    let again = getThing(saved, doc + "#note");
    again = buildThing(again).setInteger(SCHEMA + "position", 4).build();
    await saveSolidDatasetAt(doc, setThing(saved, again), { fetch });
    const reread = await getSolidDataset(doc, { fetch });
    return { note: describeNote(reread, doc + "#note") };
  },

  async saveInContainer({ container, slug }) {
    const fetch = authFetch();
    const thing = buildThing(createThing({ name: "it" }))
      .addStringNoLocale(SCHEMA + "name", "Posted with a slug")
      .build();
    const saved = await saveSolidDatasetInContainer(container, setThing(createSolidDataset(), thing), {
      fetch,
      slugSuggestion: slug,
    });
    const child = await createContainerInContainer(container, { fetch, slugSuggestion: slug + "-box" });
    const listing = await getSolidDataset(container, { fetch });
    const info = await getResourceInfo(container, { fetch });
    return {
      url: getSourceUrl(saved),
      childContainer: getSourceUrl(child),
      contained: getContainedResourceUrlAll(listing).sort(),
      effectiveAccess: getEffectiveAccess(info),
      podUrls: await getPodUrlAll(state.session.info.webId, { fetch }),
    };
  },

  async fileRoundTrip({ container, slug, first, second, contentType }) {
    const fetch = authFetch();
    const bytes = (b64) => Buffer.from(b64, "base64");
    const saved = await saveFileInContainer(container, new Blob([bytes(first)], { type: contentType }), {
      fetch,
      slug,
      contentType,
    });
    const url = getSourceUrl(saved);
    const read1 = await getFile(url, { fetch });
    const firstBack = Buffer.from(await read1.arrayBuffer()).toString("base64");
    await overwriteFile(url, new Blob([bytes(second)], { type: contentType }), { fetch, contentType });
    const read2 = await getFile(url, { fetch });
    const secondBack = Buffer.from(await read2.arrayBuffer()).toString("base64");
    return {
      url,
      isRawData: isRawData(read2),
      contentType: getContentType(read2),
      firstBack,
      secondBack,
    };
  },

  async deleteAll({ container, resources, files, containers }) {
    const fetch = authFetch();
    for (const url of files) await deleteFile(url, { fetch });
    for (const url of resources) await deleteSolidDataset(url, { fetch });
    for (const url of containers ?? []) await deleteContainer(url, { fetch });
    await deleteContainer(container, { fetch });
    return {};
  },

  // -- 2. access control --------------------------------------------------------------------------

  /** An own ACL for a container, made from its fallback: the agent may read the container and
   * read and write everything in it; the public may read the container (not its members). */
  async shareContainer({ container, member, agent }) {
    const fetch = authFetch();
    await createContainerAt(container, { fetch });
    const memberThing = buildThing(createThing({ name: "x" })).addStringNoLocale(SCHEMA + "name", "member").build();
    await saveSolidDatasetAt(member, setThing(createSolidDataset(), memberThing), { fetch });
    const withAcl = await getSolidDatasetWithAcl(container, { fetch });
    const before = {
      hasResourceAcl: hasResourceAcl(withAcl),
      hasFallbackAcl: hasFallbackAcl(withAcl),
      hasAccessibleAcl: hasAccessibleAcl(withAcl),
    };
    let acl = createAclFromFallbackAcl(withAcl);
    acl = setAgentResourceAccess(acl, agent, { ...NONE, read: true });
    acl = setAgentDefaultAccess(acl, agent, { ...NONE, read: true, write: true, append: true });
    acl = setPublicResourceAccess(acl, { ...NONE, read: true });
    await saveAclFor(withAcl, acl, { fetch });
    const after = await getSolidDatasetWithAcl(container, { fetch });
    const own = getResourceAcl(after);
    return {
      before,
      after: { hasResourceAcl: hasResourceAcl(after), hasAccessibleAcl: hasAccessibleAcl(after) },
      aclUrl: own === null ? null : getSourceUrl(own),
      agentResource: own === null ? null : access(getAgentResourceAccess(own, agent)),
      agentDefault: own === null ? null : access(getAgentDefaultAccess(own, agent)),
      publicResource: own === null ? null : access(getPublicResourceAccess(own)),
    };
  },

  /** An own ACL for one resource (a file), from the fallback the container's ACL now is: the agent
   * may only read it, the public nothing; then the public may read it after all. */
  async restrictFile({ container, slug, agent }) {
    const fetch = authFetch();
    const saved = await saveFileInContainer(container, new Blob(["plain text"], { type: "text/plain" }), {
      fetch,
      slug,
      contentType: "text/plain",
    });
    const url = getSourceUrl(saved);
    const info = await getResourceInfoWithAcl(url, { fetch });
    const before = { hasResourceAcl: hasResourceAcl(info), hasFallbackAcl: hasFallbackAcl(info) };
    let acl = createAclFromFallbackAcl(info);
    acl = setAgentResourceAccess(acl, agent, { ...NONE, read: true });
    await saveAclFor(info, acl, { fetch });
    const withAcl = await getFileWithAcl(url, { fetch });
    return {
      url,
      before,
      hasResourceAcl: hasResourceAcl(withAcl),
      agentResource: access(getAgentResourceAccess(getResourceAcl(withAcl), agent)),
    };
  },

  async publicRead({ url, read }) {
    const fetch = authFetch();
    const info = await getResourceInfoWithAcl(url, { fetch });
    let acl = getResourceAcl(info) ?? createAclFromFallbackAcl(info);
    acl = setPublicResourceAccess(acl, { ...NONE, read });
    await saveAclFor(info, acl, { fetch });
    return {};
  },

  /** The access-mode-agnostic API: it finds out that the server does WAC and edits ACLs itself. */
  async universal({ url, agent, agentAccess, publicAccess }) {
    const fetch = authFetch();
    const result = {};
    if (agentAccess !== undefined) {
      result.setAgent = await universalAccess.setAgentAccess(url, agent, agentAccess, { fetch });
    }
    if (publicAccess !== undefined) {
      result.setPublic = await universalAccess.setPublicAccess(url, publicAccess, { fetch });
    }
    result.agent = await universalAccess.getAgentAccess(url, agent, { fetch });
    result.public = await universalAccess.getPublicAccess(url, { fetch });
    return result;
  },

  // -- 3. events ----------------------------------------------------------------------------------

  /** Lets ``agent`` publish to this pod on a topic: acl:Append on the topic container (created when
   * missing), for the container itself and, by default, everything below it. */
  async grantPublish({ topicContainer, agent }) {
    const fetch = authFetch();
    let existed = true;
    try {
      await getResourceInfo(topicContainer, { fetch });
    } catch (error) {
      if (error.statusCode !== 404) throw error;
      existed = false;
      await createContainerAt(topicContainer, { fetch });
    }
    const info = await getResourceInfoWithAcl(topicContainer, { fetch });
    let acl = getResourceAcl(info) ?? createAclFromFallbackAcl(info);
    acl = setAgentResourceAccess(acl, agent, { ...NONE, append: true });
    acl = setAgentDefaultAccess(acl, agent, { ...NONE, append: true });
    await saveAclFor(info, acl, { fetch });
    return { existed };
  },
};

await serve(steps);
